"""Workers at their own pace: no batch barrier, every job taken once, a requeued worker's job taken again first.

The loops of mnist_np.experiment.sweep.workers over the two job sources --
a packed grid's ledger and a search's stored study -- with real files, real
locks and a real Optuna storage, several processes taking jobs at once.
"""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path
from typing import Any

import pytest

from mnist_np.experiment.search.source import StudySource
from mnist_np.experiment.search.study import SearchSettings, load_study
from mnist_np.experiment.sweep.ledger import Ledger
from mnist_np.experiment.sweep.workers import busy_fraction, lanes, taken_times, work


class Jobs:
    """A job source over a list, for the loops themselves (one process, threads)."""

    def __init__(self, count: int, sweep_dir: Path) -> None:
        self.sweep_dir = str(sweep_dir)
        self.left = list(range(count))
        self.ran: dict[int, list[int]] = {}
        self.lock = threading.Lock()

    def start(self, worker: int) -> None:
        self.ran.setdefault(worker, [])

    def next(self, worker: int) -> tuple[list[str], int] | None:
        with self.lock:
            return ([], self.left.pop(0)) if self.left else None

    def done(self, worker: int, number: int, result: Any) -> None:
        self.ran[worker].append(number)

    def settle(self, error: str) -> None:
        pass

    def taken(self) -> int:
        return 0


def test_a_worker_takes_its_next_job_the_moment_its_last_one_ends(tmp_path: Path) -> None:
    """Job 0 lasts until jobs 1-3 are done: with a batch barrier (two by two) it would wait forever."""
    source = Jobs(4, tmp_path)
    others_done = threading.Event()

    def run_job(overrides: list[str], number: int) -> str:
        if number == 0:
            assert others_done.wait(timeout=60), "jobs 1-3 never ran while job 0 did: the workers waited for each other"
        elif len([n for ran in source.ran.values() for n in ran]) == 2:
            others_done.set()  # this is the third of jobs 1-3
        return f"job {number}"

    ran = lanes(2, source, run_job)
    assert sorted(n for n, _ in ran) == [0, 1, 2, 3]
    slow = next(w for w, numbers in source.ran.items() if 0 in numbers)
    assert source.ran[slow] == [0] and source.ran[1 - slow] == [1, 2, 3]
    assert sorted(taken_times(tmp_path)) == [0, 1, 2, 3]  # when each was taken, for workers_busy_fraction


def test_a_members_wall_time_runs_from_when_a_worker_took_it() -> None:
    """Two workers over 10 s: one member 0-10 s, two 0-4 and 5-10 s taken 1 s before their runs began."""
    t = 1_800_000_000_000  # ms since the epoch, as MLflow times runs
    members = [{"start_time": t, "end_time": t + 10_000, "tags": {"sweep_job_num": "0"}},
               {"start_time": t + 1_000, "end_time": t + 4_000, "tags": {"sweep_job_num": "1"}},
               {"start_time": t + 6_000, "end_time": t + 10_000, "tags": {"sweep_job_num": "2"}}]
    assert busy_fraction(members, 2) == pytest.approx((10 + 3 + 4) / 20)  # from the runs alone
    assert busy_fraction(members, 2, {1: t, 2: t + 5_000}) == pytest.approx((10 + 4 + 5) / 20)
    assert busy_fraction(members[:1], 2) is None  # one member says nothing about waiting


def _take_all(sweep_dir: str, worker: int, queue: Any) -> None:
    ledger = Ledger(sweep_dir)
    queue.put((worker, [number for number, _ in work(ledger, worker, lambda overrides, number: None)]))


def test_workers_in_several_processes_take_each_member_of_a_ledger_once(tmp_path: Path) -> None:
    Ledger.write(tmp_path, [[f"seed={i}"] for i in range(40)], first=0)
    ctx = multiprocessing.get_context("spawn")  # like cluster jobs: nothing shared but the files and their locks
    queue = ctx.Queue()
    procs = [ctx.Process(target=_take_all, args=(str(tmp_path), k, queue)) for k in range(3)]
    for p in procs:
        p.start()
    taken = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    numbers = sorted(n for ran in taken.values() for n in ran)
    assert numbers == list(range(40))  # each member exactly once, whoever took it
    assert Ledger(str(tmp_path)).next(0) is None


def test_a_requeued_worker_takes_the_member_it_had_not_finished_first(tmp_path: Path) -> None:
    ledger = Ledger.write(tmp_path, [["seed=0"], ["seed=1"], ["seed=2"]], first=5)
    assert ledger.next(worker=1) == (["seed=0"], 5)  # then the worker's job is preempted and requeued
    assert ledger.next(worker=0) == (["seed=1"], 6)
    assert ledger.next(worker=1) == (["seed=0"], 5)  # its own unfinished member again, to resume it
    ledger.done(1, 5, None)
    assert ledger.next(worker=1) == (["seed=2"], 7) and ledger.taken() == 3


def _settings(tmp_path: Path, n_trials: int) -> SearchSettings:
    return SearchSettings(n_trials=n_trials, n_jobs=3, objectives=["val_accuracy"], directions=["maximize"],
                          study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}", sampler="random", seed=0,
                          pruner=None, min_epochs=1, reduction_factor=3, max_epochs=1)


def _ask_all(source: StudySource, worker: int, queue: Any) -> None:
    source.start(worker)
    asked = []
    while (job := source.next(worker)) is not None:
        asked.append(job[1])
        source.done(worker, job[1], None)  # no member dir: told FAIL
    queue.put(asked)


@pytest.mark.parametrize("n_trials", [7])
def test_workers_asking_a_stored_study_at_once_never_ask_more_than_n_trials(tmp_path: Path, n_trials: int) -> None:
    import optuna

    settings = _settings(tmp_path, n_trials)
    load_study(settings, create=True)
    source = StudySource(settings, {"optimizer.lr": optuna.distributions.FloatDistribution(0.001, 0.5, log=True)},
                         ["trainer.epochs=1"], str(tmp_path))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ask_all, args=(source, k, queue)) for k in range(3)]
    for p in procs:
        p.start()
    asked = sorted(n for _ in procs for n in queue.get(timeout=120))
    for p in procs:
        p.join(timeout=60)
    study = load_study(settings)
    assert asked == list(range(n_trials)) and len(study.trials) == n_trials
    assert {t.state.name for t in study.trials} == {"FAIL"}  # told, each from its (missing) member dir
    # Each worker sampled with its own seed: three workers asking at once did not draw the same values.
    assert len({t.params["optimizer.lr"] for t in study.trials}) == n_trials
