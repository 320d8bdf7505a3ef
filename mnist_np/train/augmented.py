"""Augmented training pixels, epoch by epoch: the next epoch's images prepared while this one trains.

An :class:`Augmentation` (see :mod:`mnist_np.data.augment`) turns ``uint8``
pixels into new ``uint8`` pixels. :class:`AugmentedEpochs` owns the buffer
the training steps read (in shared memory, so shard processes see it) and
prepares each epoch's images from the original pixels; at the epoch
boundary they are copied into the buffer, where the steps scale them by
1/255 as they gather each batch, exactly as un-augmented pixels.
Validation and test images never pass through here.

Who does the work: a worker process at the lowest CPU priority, forked
after the shard processes, starts on epoch ``e + 1`` while epoch ``e``
trains, from its first chunk onwards. Where a core is spare
(``trainer.threads`` below the cores) it finishes unseen. Where the training
keeps every core busy, it yields to it -- at normal priority it would take
a core from one shard process while the other spins waiting for it, costing
the epoch about twice its own CPU time -- and at the epoch boundary, while
the shard processes wait, the training process takes chunks from the last
one backwards until the two meet. A process, not a thread: two threads
making images hand the GIL to each other at every NumPy call, each hand-over
waking a sleeping thread, and on a virtual machine two threads measured
slower than one.

How the two split the chunks without a lock: the worker publishes how many
chunks it has finished (``progress``, in order from the first) and never
starts a chunk at or beyond ``limit``; the training process lowers
``limit`` one chunk at a time and transforms that chunk itself, until
``limit`` is at or below ``progress``. Where the two reach the same chunk
at the same moment, both transform it: a chunk's pixels depend on nothing
but its place, so they write the same bytes. The training process then
waits for the worker to say it has stopped before it reads the images or
hands over the next epoch.

Randomness: epoch ``e`` draws its key from
``Generator(stream.bit_generator.jumped(e + 1))``, the run's ``augment``
stream left as it was (so a run resumed from a checkpoint, which restores
the stream, prepares the same images); the key's :class:`SeedSequence`
spawns one generator per chunk of :data:`CHUNK` images. Each chunk's pixels
are thus a function of the stream, the epoch and the chunk's place, never
of which process transformed it or when.

Where processes are not forked (see :func:`mnist_np.train.stepper.can_shard`),
each epoch's images are made at its start, by the training process alone.
"""

from __future__ import annotations

import os
import select
import time
from typing import Callable, Protocol

import numpy as np

from mnist_np.train.forked import Reports, exited, fork_worker, reap, shared_zeros
from mnist_np.train.stepper import can_shard

# Images per call of the transform: large enough that the per-call Python
# overhead stays small, small enough that the training process, taking
# chunks at the epoch boundary, rarely does one the worker also started.
# A constant: the chunks' generators depend on it, never on who makes them.
CHUNK = 128
LOWEST_PRIORITY = 19  # nice value of the worker process
NAP_SECONDS = 0.001  # between looks at a worker finishing its last chunk
PARENT_CHECK_SECONDS = 1.0  # how often an idle worker checks that the training process is there

# Slots of the shared control counters: the epoch handed over, the first chunk the
# worker must not start, chunks it has finished, 1 + the epoch it has stopped work on, stop.
_EPOCH, _LIMIT, _PROGRESS, _STOPPED, _STOP = range(5)


class AugmentationFailed(RuntimeError):
    """The worker process making the augmented images raised an error or died."""


class Augmentation(Protocol):
    """A random transform of ``images: (n, 784) uint8`` into ``out: (n, 784) uint8``, drawing from ``rng`` only."""

    def __call__(self, images: np.ndarray, rng: np.random.Generator, out: np.ndarray) -> None: ...


class EpochJob:
    """Epoch ``epoch``'s (0-based) augmented copy of ``pixels: (N, 784) uint8`` into ``out``, chunk by chunk."""

    def __init__(self, pixels: np.ndarray, augmentation: Augmentation, stream: np.random.Generator, epoch: int,
                 out: np.ndarray) -> None:
        self.pixels, self.augmentation, self.out, self.epoch = pixels, augmentation, out, epoch
        self.starts = range(0, len(pixels), CHUNK)
        epoch_rng = np.random.Generator(stream.bit_generator.jumped(epoch + 1))  # `stream` itself never moves
        self.seeds = np.random.SeedSequence(epoch_rng.integers(2**63, size=4)).spawn(len(self.starts))

    def __len__(self) -> int:
        """The number of chunks."""
        return len(self.starts)

    def chunk(self, k: int) -> None:
        """Transform chunk ``k`` (rows ``k * CHUNK`` on) into ``out``."""
        rows = slice(self.starts[k], self.starts[k] + CHUNK)
        self.augmentation(self.pixels[rows], np.random.default_rng(self.seeds[k]), self.out[rows])

    def run(self) -> None:
        """Every chunk, in order, in this process."""
        for k in range(len(self)):
            self.chunk(k)


class AugmentedEpochs:
    """Each epoch's augmented copy of ``pixels: (N, 784) uint8`` in :attr:`images`, the next one prepared meanwhile.

    Use as a context manager (the worker process runs inside it) and call
    :meth:`load` at the start of every epoch. Enter it *after* a sharded
    stepper has forked its processes, so that they do not inherit the worker.

    ``alloc(shape, dtype)`` makes :attr:`images` (shared memory for shard processes).
    """

    def __init__(self, pixels: np.ndarray, augmentation: Augmentation, stream: np.random.Generator, epochs: int,
                 alloc: Callable[[tuple[int, ...], np.dtype], np.ndarray] = np.zeros) -> None:
        if pixels.dtype != np.uint8:
            raise ValueError(f"augmentation transforms uint8 pixels, not {pixels.dtype} features")
        self.pixels, self.augmentation, self.stream, self.epochs = pixels, augmentation, stream, epochs
        self.images = alloc(pixels.shape, np.dtype(np.uint8))  # what the training steps read
        self._next = shared_zeros(pixels.shape, np.uint8)  # the epoch being prepared, written by both processes
        self._ctl = shared_zeros((5,), np.int64)
        self._reports = Reports(1)
        self._worker: int | None = None  # its pid
        self._wake: int | None = None  # the pipe the worker waits on for its next epoch
        self._pending: EpochJob | None = None

    @classmethod
    def of(cls, pixels: np.ndarray, augmentation: Augmentation | None, stream: np.random.Generator | None, epochs: int,
           alloc: Callable[[tuple[int, ...], np.dtype], np.ndarray] = np.zeros) -> "AugmentedEpochs | None":
        """The augmented epochs of ``pixels``, or None without an ``augmentation`` (nothing touches the pixels then)."""
        if augmentation is None:
            return None
        if stream is None:
            raise ValueError("augmentation needs its random generator")
        return cls(pixels, augmentation, stream, epochs, alloc)

    def __enter__(self) -> "AugmentedEpochs":
        if can_shard():
            self._ctl[:] = 0
            wait, self._wake = os.pipe()
            parent = os.getpid()
            wake = self._wake
            self._worker = fork_worker(lambda: self._serve(wait, parent), self._reports, 0,
                                       before=lambda: os.close(wake))
            os.close(wait)
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the worker (between two chunks) and reap it."""
        if self._worker is not None:
            self._ctl[_STOP] = 1
            os.close(self._wake)  # an idle worker reads the end of the pipe
            reap([self._worker])
        self._worker, self._wake, self._pending = None, None, None

    def load(self, epoch: int) -> float:
        """Put epoch ``epoch``'s (0-based) images in :attr:`images`, then start preparing the next epoch's.

        Returns the seconds this took: the chunks the worker has not done
        yet (this process takes them from the end) and the copy. Call it
        only while no step is running: the steps read :attr:`images`.
        """
        started = time.perf_counter()
        job = self._pending
        if job is None or job.epoch != epoch:  # the first epoch of this fit (or of a resumed one): both processes on it
            if job is not None:  # another epoch under way (never in a fit, whose epochs come in order): stop it first
                self._ctl[_LIMIT] = 0
                self._wait_stopped(job)
            job = self._hand_over(epoch)
        self._finish(job)
        np.copyto(self.images, self._next)
        self._pending = self._hand_over(epoch + 1) if epoch + 1 < self.epochs else None
        return time.perf_counter() - started

    # ------------------------------------------------------------------ training process

    def _hand_over(self, epoch: int) -> EpochJob:
        """Epoch ``epoch``'s job, handed to the worker (which starts at its first chunk)."""
        job = EpochJob(self.pixels, self.augmentation, self.stream, epoch, self._next)
        if self._worker is not None:
            self._ctl[_PROGRESS] = 0
            self._ctl[_LIMIT] = len(job)
            self._ctl[_EPOCH] = epoch
            os.write(self._wake, b"\1")  # a system call: the stores above are visible to the worker after it
        return job

    def _finish(self, job: EpochJob) -> None:
        """The chunks of ``job`` the worker has not reached, from the last backwards; then wait for the worker to
        stop."""
        if self._worker is None:
            job.run()
            return
        ctl = self._ctl
        while (k := int(ctl[_LIMIT]) - 1) >= ctl[_PROGRESS]:
            ctl[_LIMIT] = k  # the worker will not start it; if it already has, both write the same bytes
            self._check_worker()
            job.chunk(k)
        self._wait_stopped(job)

    def _wait_stopped(self, job: EpochJob) -> None:
        """Until the worker has stopped work on ``job`` (it finishes at most the chunk it is on)."""
        while self._ctl[_STOPPED] != job.epoch + 1:
            self._check_worker()
            time.sleep(NAP_SECONDS)
        self._check_worker()

    def _check_worker(self) -> None:
        """Raise :class:`AugmentationFailed` if the worker reported an error or is gone."""
        if (message := self._reports.message(0)) is not None:
            raise AugmentationFailed(f"augmentation worker: {message}")
        if (ended := exited(self._worker)) is not None:
            self._worker = None
            raise AugmentationFailed(f"augmentation worker: its process ended unexpectedly ({ended})")

    # ------------------------------------------------------------------ worker process

    def _serve(self, wait: int, parent: int) -> None:
        """The worker: at the lowest priority, each epoch handed over, chunk by chunk from the first, until told to
        stop."""
        os.setpriority(os.PRIO_PROCESS, 0, LOWEST_PRIORITY)
        ctl = self._ctl
        while True:
            # A look at the parent every second: a process it forked later may hold the pipe open after it died.
            if not select.select([wait], [], [], PARENT_CHECK_SECONDS)[0]:
                if os.getppid() != parent:
                    return
                continue
            if not os.read(wait, 1):  # the training process closed the pipe, or is gone
                return
            job = EpochJob(self.pixels, self.augmentation, self.stream, int(ctl[_EPOCH]), self._next)
            k = 0
            while k < ctl[_LIMIT] and not ctl[_STOP] and os.getppid() == parent:
                job.chunk(k)
                k += 1
                ctl[_PROGRESS] = k  # after the chunk's pixels: x86-64 keeps stores in order
            ctl[_STOPPED] = job.epoch + 1
