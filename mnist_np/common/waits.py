"""Waits between forked processes: spin for microseconds, then sleep until woken.

A :class:`Doorbell` is a counting semaphore in memory that processes
forked after it share: :meth:`~Doorbell.ring` adds one, :meth:`~Doorbell.wait`
takes one. The waiter first tries without blocking for :data:`SPIN_SECONDS`
(within a training step the other side is usually microseconds away), then
sleeps in the kernel until a ring wakes it, so a process that waits never
takes the core that the process it waits for needs.

Why a POSIX semaphore (``multiprocessing``'s, glibc's futex-backed
``sem_t``): measured on this project's 2-core VM (``scripts/bench.py
waits``), a ring with nobody asleep is an atomic add in user space
(0.04 µs from Python; an ``eventfd`` or a pipe write is a system call,
0.4 µs), a try while spinning is an atomic compare-and-swap (0.07 µs), and
a round trip through two sleeping processes costs the same for all three
(34-35 µs). The ring is on every step's path whether the other side sleeps
or not, so the cheapest ring wins. The count is the state: a ring made
before the wait starts is never lost.

A sleeping waiter wakes every :data:`CHECK_SECONDS` to call its ``check``
(is the other process still there?), which ends the wait by raising or
exiting; about ten wake-ups a second, a few microseconds each.
Standard library only; Linux (the callers fork only there).
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Callable

# Spin this long before sleeping. A sleep and its wake-up put 20-40 µs on the critical path (the ring's system
# call, the waiter's wake-up); spinning costs nothing where the waiter's core would idle anyway. Measured on the
# default network alone (the waits' lengths with a 5 ms spin, 2 processes), 95% of the waits inside a step end
# within 25-110 µs at batch 32 and 128 and 300 µs at batch 512 (the caller waiting for the other shard), so
# this covers them; longer ones sleep. Far below a time slice (ms): where another job needs the core, a waiter
# gives it back after this, and the pace (mnist_np.train.pace) soon stops making the processes wait at all.
SPIN_SECONDS = 300e-6
CHECK_SECONDS = 0.1  # how often a sleeping waiter calls its check


class Doorbell:
    """A counting semaphore shared with processes forked after it is made; starts at zero."""

    def __init__(self) -> None:
        self._semaphore = multiprocessing.get_context("fork").Semaphore(0)
        # The semaphore's C methods themselves (a call costs ~0.07 µs): the spin loop tries a few hundred times.
        self._take, self._give = self._semaphore.acquire, self._semaphore.release

    def ring(self) -> None:
        """Add one: wakes a sleeping waiter, or lets the next wait return at once."""
        self._give()

    def wait(self, spin: float = SPIN_SECONDS, check: Callable[[], None] | None = None) -> bool:
        """Take one ring; returns whether the wait had to sleep (the other side was more than ``spin`` away)."""
        take = self._take
        if take(False):
            return False
        if spin > 0:
            clock = time.perf_counter
            end = clock() + spin
            while clock() < end:
                if take(False):
                    return False
        while not take(True, CHECK_SECONDS):
            if check is not None:
                check()
        return True
