"""Augmented training pixels, epoch by epoch: the next epoch's images prepared in a background thread.

An :class:`Augmentation` (see :mod:`mnist_np.data.augment`) turns ``uint8``
pixels into new ``uint8`` pixels. :class:`AugmentedEpochs` owns the buffer
the training steps read (in shared memory, so shard processes see it) and,
while epoch ``e`` trains, prepares epoch ``e + 1``'s images from the
original pixels in one background thread; at the epoch boundary they are
copied into the buffer, where the steps scale them by 1/255 as they gather
each batch, exactly as un-augmented pixels. Validation and test images
never pass through here.

Why a thread: the transforms are NumPy passes over whole chunks of images,
which release the GIL, so the thread works while the training step runs.
The copy at the boundary (one memcpy of the training set) keeps the buffer
the shard processes were forked with.

Randomness: epoch ``e``'s images draw from their own generator,
``Generator(stream.bit_generator.jumped(e + 1))`` -- a function of the run's
``augment`` stream and the epoch number only, built in the main thread and
used by the worker alone, so the pixels do not depend on thread timing; the
stream itself never advances, so a run resumed from a checkpoint (which
restores it) prepares the same images. The images are transformed in
chunks of :data:`CHUNK`, drawn in order: a fixed constant, never derived
from the thread or core count.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Protocol

import numpy as np

# Images per call of the transform: small enough that its scratch arrays stay
# in the core's cache (measured: 64-128 beat 1024 by a third), large enough
# that the per-call Python overhead -- with the GIL held -- stays small.
CHUNK = 128


class Augmentation(Protocol):
    """A random transform of ``images: (n, 784) uint8`` into ``out: (n, 784) uint8``, drawing from ``rng`` only."""

    def __call__(self, images: np.ndarray, rng: np.random.Generator, out: np.ndarray) -> None: ...


def epoch_generator(stream: np.random.Generator, epoch: int) -> np.random.Generator:
    """Epoch ``epoch``'s (0-based) own generator: ``stream`` jumped ``epoch + 1`` times, ``stream`` left as it was."""
    return np.random.Generator(stream.bit_generator.jumped(epoch + 1))


def augment_all(pixels: np.ndarray, augmentation: Augmentation, rng: np.random.Generator, out: np.ndarray,
                stop: threading.Event | None = None) -> bool:
    """``augmentation`` over ``pixels: (N, 784) uint8`` into ``out``, :data:`CHUNK` rows at a time; False if ``stop`` was set first."""
    for start in range(0, len(pixels), CHUNK):
        if stop is not None and stop.is_set():
            return False
        augmentation(pixels[start : start + CHUNK], rng, out[start : start + CHUNK])
    return True


class AugmentedEpochs:
    """Each epoch's augmented copy of ``pixels: (N, 784) uint8`` in :attr:`images`, the next one prepared meanwhile.

    Use as a context manager (the thread runs inside it) and call
    :meth:`load` at the start of every epoch. Enter it *after* a sharded
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
        self._next = np.empty_like(pixels)  # written by the thread only, between load() calls
        self._stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: tuple[int, Future] | None = None

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
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="augment")
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop a preparation under way (between two chunks) and end the thread."""
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._pool, self._pending = None, None

    def load(self, epoch: int) -> float:
        """Put epoch ``epoch``'s (0-based) images in :attr:`images`, then start preparing the next epoch's.

        Returns the seconds spent waiting for them (the whole preparation for
        the first epoch trained; nothing once the thread keeps ahead). Call it
        only while no step is running: the steps read :attr:`images`.
        """
        started = time.perf_counter()
        if self._pending is None or self._pending[0] != epoch:  # the first epoch of this fit (or of a resumed one)
            self._start(epoch)
        assert self._pending is not None
        self._pending[1].result()  # re-raises what the thread raised
        np.copyto(self.images, self._next)
        waited = time.perf_counter() - started
        self._pending = None
        if epoch + 1 < self.epochs:
            self._start(epoch + 1)
        return waited

    def _start(self, epoch: int) -> None:
        assert self._pool is not None, "use AugmentedEpochs as a context manager"
        rng = epoch_generator(self.stream, epoch)  # here, in the caller's thread, in epoch order
        self._pending = (epoch, self._pool.submit(augment_all, self.pixels, self.augmentation, rng, self._next, self._stop))
