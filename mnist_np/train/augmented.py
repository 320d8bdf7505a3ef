"""Augmented training pixels, epoch by epoch: the next epoch's images prepared while this one trains.

An :class:`Augmentation` (see :mod:`mnist_np.data.augment`) turns ``uint8``
pixels into new ``uint8`` pixels. :class:`AugmentedEpochs` owns the buffer
the training steps read (in shared memory, so shard processes see it) and
prepares each epoch's images from the original pixels; at the epoch
boundary they are copied into the buffer, where the steps scale them by
1/255 as they gather each batch, exactly as un-augmented pixels.
Validation and test images never pass through here.

Who does the work: one background thread at the lowest CPU priority starts
on epoch ``e + 1`` while epoch ``e`` trains. Where a core is spare
(``trainer.threads`` below the cores) it finishes unseen. Where the training
keeps every core busy, it yields to it -- at normal priority it would take
a core from one shard process while the other spins waiting for it, costing
the epoch about twice its own CPU time -- and at the epoch boundary, while
the shard processes wait, the main thread takes chunks too, so what is left
is done by two threads on two free cores. (The transforms are NumPy passes
that release the GIL, so the two threads do run side by side.)

Randomness: epoch ``e`` draws its key from
``Generator(stream.bit_generator.jumped(e + 1))``, the run's ``augment``
stream left as it was (so a run resumed from a checkpoint, which restores
the stream, prepares the same images); the key's :class:`SeedSequence`
spawns one generator per chunk of :data:`CHUNK` images. Each chunk's pixels
are thus a function of the stream, the epoch and the chunk's place, never
of which thread transformed it or when.
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
import time
from typing import Callable, Protocol

import numpy as np

# Images per call of the transform: small enough that its scratch arrays stay
# in the core's cache (measured faster than 1024), large enough that the
# per-call Python overhead -- with the GIL held -- stays small. A constant:
# the chunks' generators depend on it, never on the thread or core count.
CHUNK = 128
LOWEST_PRIORITY = 19  # nice value of the background thread (Linux sets it per thread)


class Augmentation(Protocol):
    """A random transform of ``images: (n, 784) uint8`` into ``out: (n, 784) uint8``, drawing from ``rng`` only."""

    def __call__(self, images: np.ndarray, rng: np.random.Generator, out: np.ndarray) -> None: ...


class EpochJob:
    """Epoch ``epoch``'s (0-based) augmented copy of ``pixels: (N, 784) uint8`` into ``out``, chunk by chunk.

    Any number of threads may call :meth:`work` at once; each takes the next
    chunk not yet taken. :meth:`wait` returns when every chunk is done.
    """

    def __init__(self, pixels: np.ndarray, augmentation: Augmentation, stream: np.random.Generator, epoch: int,
                 out: np.ndarray) -> None:
        self.pixels, self.augmentation, self.out, self.epoch = pixels, augmentation, out, epoch
        self.starts = range(0, len(pixels), CHUNK)
        epoch_rng = np.random.Generator(stream.bit_generator.jumped(epoch + 1))  # `stream` itself never moves
        self.seeds = np.random.SeedSequence(epoch_rng.integers(2**63, size=4)).spawn(len(self.starts))
        self._next = itertools.count()  # next() on it is atomic under the GIL
        self._lock = threading.Lock()
        self._done = 0
        self._finished = threading.Event()
        self.error: BaseException | None = None

    def work(self, stop: threading.Event | None = None) -> None:
        """Transform chunks not yet taken until none is left (or ``stop`` is set)."""
        while (stop is None or not stop.is_set()) and self.error is None:
            k = next(self._next)
            if k >= len(self.starts):
                return
            rows = slice(self.starts[k], self.starts[k] + CHUNK)
            try:
                self.augmentation(self.pixels[rows], np.random.default_rng(self.seeds[k]), self.out[rows])
            except BaseException as e:  # raised again by wait(), in the caller's thread
                self.error = e
                self._finished.set()
                raise
            with self._lock:
                self._done += 1
                if self._done == len(self.starts):
                    self._finished.set()

    def wait(self) -> None:
        """Until every chunk is done; re-raises what a chunk raised."""
        self._finished.wait()
        if self.error is not None:
            raise self.error


class AugmentedEpochs:
    """Each epoch's augmented copy of ``pixels: (N, 784) uint8`` in :attr:`images`, the next one prepared meanwhile.

    Use as a context manager (the background thread runs inside it) and
    call :meth:`load` at the start of every epoch. Enter it *after* a sharded
    stepper has forked its processes: a fork while this thread holds a lock
    (in NumPy's allocator, in BLAS) would leave the child waiting forever.

    ``alloc(shape, dtype)`` makes :attr:`images` (shared memory for shard processes).
    """

    def __init__(self, pixels: np.ndarray, augmentation: Augmentation, stream: np.random.Generator, epochs: int,
                 alloc: Callable[[tuple[int, ...], np.dtype], np.ndarray] = np.zeros) -> None:
        if pixels.dtype != np.uint8:
            raise ValueError(f"augmentation transforms uint8 pixels, not {pixels.dtype} features")
        self.pixels, self.augmentation, self.stream, self.epochs = pixels, augmentation, stream, epochs
        self.images = alloc(pixels.shape, np.dtype(np.uint8))  # what the training steps read
        self._next = np.empty_like(pixels)  # the epoch being prepared
        self._stop = threading.Event()
        self._jobs: queue.SimpleQueue[EpochJob | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
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
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="augment", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop a preparation under way (between two chunks) and end the thread."""
        self._stop.set()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join()
        self._thread, self._pending = None, None

    def load(self, epoch: int) -> float:
        """Put epoch ``epoch``'s (0-based) images in :attr:`images`, then start preparing the next epoch's.

        Returns the seconds this took: the chunks the background thread has
        not done yet (this thread helps with them) and the copy. Call it
        only while no step is running: the steps read :attr:`images`.
        """
        started = time.perf_counter()
        job = self._pending
        if job is None or job.epoch != epoch:  # the first epoch of this fit (or of a resumed one): both threads on it
            job = EpochJob(self.pixels, self.augmentation, self.stream, epoch, self._next)
            self._jobs.put(job)
        job.work()
        job.wait()
        np.copyto(self.images, self._next)
        self._pending = None
        if epoch + 1 < self.epochs:
            self._pending = EpochJob(self.pixels, self.augmentation, self.stream, epoch + 1, self._next)
            self._jobs.put(self._pending)
        return time.perf_counter() - started

    def _serve(self) -> None:
        """The background thread: at the lowest priority, work on each job handed over until told to stop."""
        # Linux alone takes a thread id here (and renices that thread only); elsewhere the number would name a process.
        if sys.platform.startswith("linux"):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
        while (job := self._jobs.get()) is not None:
            try:
                job.work(self._stop)
            except BaseException:  # noqa: BLE001 -- kept on the job; load() raises it in the main thread
                pass
