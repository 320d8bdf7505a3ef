"""Telling Slurm's requeue from a failure (mnist_np.experiment.run.preemption), without a cluster.

submitit's handler for the warning signal requeues the job and raises
``SystemExit``, or raises an ordinary error when it will not requeue. Here
a stand-in handler does the same, and the signal is sent to this process
for real; tests/test_slurm.py runs the whole thing on a real Slurm.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from mnist_np.experiment.run.preemption import SIGNAL_ENV, PreemptionWatch, requeued, warning_signal


@pytest.fixture
def usr2_handler() -> Iterator[None]:
    """Whatever this test installs for SIGUSR2 is undone afterwards."""
    before = signal.getsignal(signal.SIGUSR2)
    yield
    signal.signal(signal.SIGUSR2, before)


def requeue_and_exit(signum: int, frame: object) -> None:  # what submitit does once `scontrol requeue` succeeded
    raise SystemExit(-1)


def refuse_to_requeue(signum: int, frame: object) -> None:  # submitit's UncompletedJobError: timed out too often
    raise RuntimeError("Job not requeued because: timed-out too many times.")


def test_the_exit_after_a_requeue_is_told_from_a_failure(usr2_handler: None) -> None:
    signal.signal(signal.SIGUSR2, requeue_and_exit)
    with PreemptionWatch() as watch, pytest.raises(SystemExit) as exit_info:
        assert signal.getsignal(signal.SIGUSR2) is not requeue_and_exit  # wrapped while watching
        os.kill(os.getpid(), signal.SIGUSR2)
    assert watch.signal_name == "SIGUSR2" and watch.requeued_exit(exit_info.value)
    assert signal.getsignal(signal.SIGUSR2) is requeue_and_exit  # restored


def test_a_handler_that_will_not_requeue_is_a_failure(usr2_handler: None) -> None:
    signal.signal(signal.SIGUSR2, refuse_to_requeue)
    with PreemptionWatch() as watch, pytest.raises(RuntimeError) as error:
        os.kill(os.getpid(), signal.SIGUSR2)
    assert watch.signal_name == "SIGUSR2" and not watch.requeued_exit(error.value)


def test_an_exit_without_the_signal_is_not_a_requeue(usr2_handler: None) -> None:
    signal.signal(signal.SIGUSR2, requeue_and_exit)
    with PreemptionWatch() as watch:
        pass
    assert watch.signal_name is None and not watch.requeued_exit(SystemExit(-1))


def test_outside_a_scheduler_the_watch_changes_nothing(usr2_handler: None) -> None:
    # Nobody handles it: the signal keeps its default (it ends the process).
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    with PreemptionWatch():
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL


def test_the_signal_is_submitits_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SIGNAL_ENV, raising=False)
    assert warning_signal() == signal.SIGUSR2
    monkeypatch.setenv(SIGNAL_ENV, "USR1")
    assert warning_signal() == signal.SIGUSR1
    monkeypatch.setenv(SIGNAL_ENV, "SIGTERM")
    assert warning_signal() == signal.SIGTERM


@pytest.mark.parametrize(("count", "expected"), [(None, False), ("0", False), ("", False), ("1", True), ("3", True)])
def test_a_requeued_attempt_knows_it_is_one(count: str | None, expected: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    if count is not None:
        monkeypatch.setenv("SLURM_RESTART_COUNT", count)
    assert requeued() is expected
