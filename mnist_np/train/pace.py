"""When a sharded step runs its shards in their processes, and when all of them in the caller.

:class:`mnist_np.train.sharded.ShardedStepper` splits every batch into the
same shards whatever the machine's load (the bits depend on the split).
Who computes them may change: on cores of their own the shard processes
share the work (*parallel*); when something else takes a core -- a second
run, a busy neighbour -- the processes wait for each other at every step,
and the caller is faster computing every shard itself one after the other
(*inline*: the same arithmetic, the same bits, the other processes asleep).

:class:`Pace` decides from step times it measures, in windows of
:data:`WINDOW` steps (fewer where steps are long: :data:`WINDOW_SECONDS`):

- parallel, it watches how often the caller had to sleep waiting for
  another shard process (on cores of their own they arrive within
  microseconds of each other); when a quarter of a window's steps did,
  the next window runs inline as a trial, and stays inline if that was
  :data:`MARGIN` faster;
- inline, every :data:`CHECK_WINDOWS` windows it asks whether a core stood
  idle meanwhile (:class:`mnist_np.common.cores.IdleMeter`): with none, a
  second process would only take turns with whoever holds them, and no
  trial is made (but once every :data:`LONGEST_WAIT` windows); with one, a
  window runs parallel as a trial, and parallel comes back if that was
  :data:`MARGIN` faster.

A trial that is already :data:`ABORT` slower than the steady mode after
:data:`ABORT_STEPS` steps ends there, lost. After each lost trial the next
one waits twice as long (up to :data:`LONGEST_WAIT` windows), so
trials cost little where the load stays. The time between two epochs
(evaluation) is left out of every window.
"""

from __future__ import annotations

import time
from typing import Callable

#: a measurement: WINDOW steps, or fewer (at least ABORT_STEPS) that took WINDOW_SECONDS
WINDOW, WINDOW_SECONDS = 32, 0.02
MARGIN = 0.05  #: how much faster a trial must be to switch
ABORT, ABORT_STEPS = 0.25, 8  #: a trial this much slower after this many steps has lost
BLOCKED_SHARE = 0.25  #: share of a parallel window's steps that slept before an inline trial
CHECK_WINDOWS = 4  #: inline: windows between two looks at the idle cores
SPARE_CORES = 0.5  #: inline: idle cores (on average) that make a parallel trial worth it
LONGEST_WAIT = 64  #: the longest wait, in windows, between two lost trials


class Pace:
    """Parallel or inline, step by step: call :meth:`step` before each step and :meth:`slept` when a wait slept.

    ``idle()`` gives the idle cores since its last call (None: unknown, then
    trials are made without asking); ``clock()`` the time.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter,
                 idle: Callable[[], float | None] | None = None) -> None:
        self.parallel = True  #: how the current step runs
        self.clock, self.idle = clock, idle
        self.switches = 0  #: how often the steady mode changed (for tests and benchmarks)
        self.trials = 0  #: trials made
        self._trial = False  # the current window tries the other mode
        self._steady: float | None = None  # seconds per step of the steady mode's last window
        self._window_start: float | None = None
        self._steps = 0  # steps in the current window
        self._blocked = 0  # of those, steps in which the caller slept
        self._gap = CHECK_WINDOWS  # inline: windows from one trial to the next, at least (doubles with each lost one)
        self._unlooked = 0  # inline windows since the last look at the idle cores
        self._cooldown = 0  # parallel: windows before another inline trial may start
        self._lost = 0  # trials lost in a row
        self._unasked = 0  # inline windows since the last trial

    def step(self) -> bool:
        """Before a step: whether it runs parallel."""
        now = self.clock()
        if self._window_start is None:
            self._window_start, self._steps, self._blocked = now, 0, 0
        elif self._steps >= WINDOW or (self._steps >= ABORT_STEPS and now - self._window_start >= WINDOW_SECONDS) \
                or self._losing(now):
            self._end_window((now - self._window_start) / self._steps)
            self._window_start, self._steps, self._blocked = now, 0, 0
        self._steps += 1
        return self.parallel

    def slept(self) -> None:
        """The caller slept in a wait of the current step (counted once per step)."""
        self._blocked = min(self._blocked + 1, self._steps)

    def pause(self) -> None:
        """The steps stop for a while (the epoch ends): the current window (a trial's too) starts afresh at the next
        step."""
        self._window_start = None

    def _losing(self, now: float) -> bool:
        return (self._trial and self._steady is not None and self._steps >= ABORT_STEPS
                and now - self._window_start > (1 + ABORT) * self._steady * self._steps)  # type: ignore[operator]

    def _end_window(self, per_step: float) -> None:
        if self._trial:
            self._end_trial(per_step)
        elif self.parallel:
            self._steady = per_step
            self._cooldown = max(0, self._cooldown - 1)
            if self._blocked >= BLOCKED_SHARE * self._steps and self._cooldown == 0:
                self._start_trial()
        else:
            self._steady = per_step
            self._unasked += 1
            self._unlooked += 1
            if self._unlooked >= CHECK_WINDOWS:
                self._unlooked = 0
                spare = self.idle() if self.idle is not None else None
                # Now and then a trial whatever the idle cores say: they are the host's, which a VM's or a
                # container's /proc/stat may show busy with others' work on other physical cores.
                if (((spare is None or spare >= SPARE_CORES) and self._unasked >= self._gap)
                    or self._unasked >= LONGEST_WAIT):
                    self._start_trial()

    def _start_trial(self) -> None:
        self._trial, self.parallel = True, not self.parallel
        self.trials += 1
        self._unasked = 0

    def _end_trial(self, per_step: float) -> None:
        self._trial = False
        if self._steady is not None and per_step < (1 - MARGIN) * self._steady:  # the tried mode becomes the steady one
            self._steady = per_step
            self.switches += 1
            self._gap, self._lost, self._cooldown = CHECK_WINDOWS, 0, 0
        else:
            self.parallel = not self.parallel
            self._lost += 1
            if self.parallel:  # an inline trial lost: the load that made steps sleep may be short-lived
                self._cooldown = min(2 ** self._lost, LONGEST_WAIT)
            else:
                self._gap = min(2 * self._gap, LONGEST_WAIT)
        if self.idle is not None:
            self.idle()  # the next look at the idle cores starts from here, not from before the trial
