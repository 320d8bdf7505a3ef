"""A scheduler taking a member's node back: Slurm's preemption and time limits.

Before Slurm preempts a job, or before its time limit, it sends a warning
signal (SIGUSR2, which the submitit launcher asks for with
``--signal=USR2@<signal_delay_s>``; preemption sends SIGTERM first). In a
member that submitit runs, submitit's handler acts on it: it pickles the
job, has Slurm requeue it (``scontrol requeue``) and leaves the process
with ``SystemExit`` -- raised in the middle of the training.

This module lets the run tell that exit from a failure: :class:`PreemptionWatch`
notes the signal before passing it on, so the run ends KILLED with the
reason (not FAILED), and :func:`requeued` lets the next attempt know it is
one, so it resumes from its newest checkpoint into the same MLflow run
(:func:`mnist_np.experiment.sweep.resume.continued_member`) instead of
starting a new run.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType, TracebackType
from typing import Any, Callable

# submitit's setting for the signal it checkpoints and requeues on (default USR2).
SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"


def requeued() -> bool:
    """True in a Slurm job started again (requeued after preemption, a time limit or a lost node)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def warning_signal() -> signal.Signals:
    """The signal a scheduler warns a job with before taking its node back (submitit's, USR2 unless set)."""
    name = os.environ.get(SIGNAL_ENV, "USR2").upper().removeprefix("SIG")
    return getattr(signal.Signals, f"SIG{name}", signal.SIGUSR2)


class PreemptionWatch:
    """While active, notes the scheduler's warning signal before whoever handles it (submitit) acts on it.

    Outside a scheduler's job nothing handles that signal, and the watch
    changes nothing. Use as a context manager around the training, in the
    main thread (the only one Python delivers signals to).
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None  # the warning that came, if one did
        self._wrapped: dict[signal.Signals, Callable[[int, FrameType | None], Any]] = {}

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is not threading.main_thread():
            return self
        sig = warning_signal()
        handler = signal.getsignal(sig)
        if callable(handler):  # someone acts on it (submitit); SIG_DFL/SIG_IGN are left alone
            self._wrapped[sig] = handler
            signal.signal(sig, self._noting(handler))
        return self

    def _noting(self, handler: Callable[[int, FrameType | None], Any]) -> Callable[[int, FrameType | None], Any]:
        def noted(signum: int, frame: FrameType | None) -> Any:
            self.signal_name = signal.Signals(signum).name
            return handler(signum, frame)

        return noted

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._wrapped.items():
            signal.signal(sig, handler)
        self._wrapped.clear()

    def requeued_exit(self, error: BaseException) -> bool:
        """Whether ``error`` is the process leaving because the scheduler requeued it.

        submitit raises ``SystemExit`` only after ``scontrol requeue``; when it
        will not requeue (no checkpoint, too many time-outs) it raises an
        ordinary error instead, which is a failure like any other.
        """
        return self.signal_name is not None and isinstance(error, SystemExit)
