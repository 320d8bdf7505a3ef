"""Workers that each take their next job the moment their last one ends: no batch waits for its slowest member.

A *job source* hands out jobs -- a member's overrides and job number -- and
hears how each ended: a guided search asks its stored study for the next
trial and tells it the result (:mod:`mnist_np.experiment.search.source`); a
packed grid takes the next member of its ledger in the sweep dir
(:mod:`mnist_np.experiment.sweep.ledger`). ``workers`` loops, each in its
own process, take jobs from it until it has none left. A job runs exactly
as the launcher runs one (Hydra's ``run_job`` in the member's own output
dir, with its own job number), so everything a member does -- its record,
its lock, its trial's pruning -- is as in any sweep.

Where the loops run, by launcher (:func:`run_workers`):

- Hydra's joblib launcher: ``workers`` loky processes, each a loop;
- the project's submitit launchers (:mod:`mnist_np.experiment.sweep.submitit`):
  ``hydra.launcher.workers=K`` packs the jobs into K cluster jobs, each a
  loop; without it each job is a cluster job of its own, submitted by one
  of ``workers`` lanes (threads of the sweep's process) as the previous one ends;
- any other launcher (the basic one runs members in the sweep's own
  process): one loop, here, a job at a time.

A loky pool broken by a worker the OOM killer took ends every loop: the
jobs then running are settled from their dirs by the source, and the loops
start again while that makes progress.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from mnist_np.common.errors import error_line
from mnist_np.common.files import atomic_write_text
from mnist_np.experiment.sweep.launch import launcher_error

log = logging.getLogger(__name__)
JOBLIB_LAUNCHER = "JoblibLauncher"
RESTARTS = 2  # more rounds of loops after a broken pool, while rounds make progress
WORKERS_DIR = "workers"  # in the sweep dir: what the workers leave there
TAKEN_DIR = f"{WORKERS_DIR}/taken"  # when each job was handed out: a file per job number, holding the time

Job = tuple[list[str], int]  # a member's overrides and its job number
RunJob = Callable[[Sequence[str], int], Any]  # runs one job as the launcher would; returns its JobReturn


class JobSource(Protocol):
    """Hands out jobs and hears how each ended. Pickled to every worker process: its state lives in files."""

    sweep_dir: str  # where each job's hand-out time is noted (:func:`note_taken`)

    def start(self, worker: int) -> None:
        """Called first in worker ``worker``'s process (e.g. to seed that worker's sampler apart from the others')."""

    def next(self, worker: int) -> Job | None:
        """The next job for ``worker``, or None when there is none left."""

    def done(self, worker: int, number: int, result: Any) -> None:
        """Job ``number`` ended (``result``: its JobReturn, or None if the launcher handed none back)."""

    def settle(self, error: str) -> None:
        """After a launch that failed (``error``): settle the jobs that were running, from their dirs."""

    def taken(self) -> int:
        """How many jobs were handed out so far (to tell a round that made progress from one that did not)."""


def note_taken(sweep_dir: str | Path, numbers: Sequence[int], at: float | None = None) -> None:
    """Note that jobs ``numbers`` were handed to a worker now (or at ``at``, seconds since the epoch).

    A file per job, written atomically: safe from many processes and nodes at once, on a shared filesystem too.
    """
    text = repr(time.time() if at is None else at)
    for number in numbers:
        atomic_write_text(Path(sweep_dir) / TAKEN_DIR / str(number), text)


def taken_times(sweep_dir: str | Path) -> dict[int, int]:
    """When each job of the sweep was handed out (ms since the epoch, as MLflow times runs), by job number."""
    times = {}
    for path in (Path(sweep_dir) / TAKEN_DIR).glob("*"):
        try:
            times[int(path.name)] = round(1000 * float(path.read_text()))
        except (OSError, ValueError):  # not one of ours (an editor's backup, say)
            continue
    return times


def busy_fraction(members: Sequence[dict[str, Any]], workers: int,
                  taken: dict[int, int] | None = None) -> float | None:
    """How busy ``workers`` loops kept: the members' wall times over ``workers`` x (last member's end - first's start).

    ``members``: runs with ``start_time`` and ``end_time`` (ms; as MLflow has them) and tag ``sweep_job_num``.
    A member's wall time runs from the moment a worker took it (``taken``, by job number: composing its
    config and loading its data are work too) to its run's end; a member without one starts with its run.
    The sweep's own start and summary do not count against it. None without two timed members.
    """
    taken = taken or {}

    def start(m: dict[str, Any]) -> int:
        number = str(m.get("tags", {}).get("sweep_job_num", ""))
        return taken.get(int(number), m["start_time"]) if number.isdigit() else m["start_time"]

    spans = [(start(m), m["end_time"]) for m in members if m.get("start_time") and m.get("end_time")]
    if len(spans) < 2 or workers < 1:
        return None
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    return sum(e - s for s, e in spans) / (workers * (last - first)) if last > first else None


def work(source: JobSource, worker: int, run_job: RunJob) -> list[tuple[int, Any]]:
    """Worker ``worker``'s loop: take a job, run it, say how it ended, until the source has none left."""
    source.start(worker)
    ran = []
    while (job := source.next(worker)) is not None:
        overrides, number = job
        note_taken(source.sweep_dir, [number])
        result = run_job(overrides, number)
        source.done(worker, number, result)
        ran.append((number, result))
    return ran


def run_workers(launcher: Any, workers: int, source: JobSource) -> list[tuple[int, Any]]:
    """Run ``workers`` loops over ``source`` where ``launcher`` runs its jobs; returns ``(job number, JobReturn)``
    pairs."""
    ran: list[tuple[int, Any]] = []
    for _ in range(1 + RESTARTS):
        before = source.taken()
        try:
            ran += _loops(launcher, workers, source)
            return ran
        except Exception as e:  # noqa: BLE001 -- e.g. joblib's TerminatedWorkerError: the running jobs are settled
            error = launcher_error(e)
            log.warning("the workers stopped (%s); the jobs they were running are settled from their dirs", error)
            source.settle(error)
        if source.taken() == before:
            break  # a round that started nothing: another would not either
        log.info("starting the workers again")
    return ran


def loop_count(launcher: Any, workers: int) -> int:
    """How many loops :func:`run_workers` runs with this launcher (1 where it can run one job at a time only)."""
    if type(launcher).__name__ == JOBLIB_LAUNCHER:
        return workers
    if hasattr(launcher, "run_workers"):
        return int(getattr(launcher, "workers", None) or workers)
    return 1


def _loops(launcher: Any, workers: int, source: JobSource) -> list[tuple[int, Any]]:
    """The loops, where this launcher runs jobs (see the module doc)."""
    if type(launcher).__name__ == JOBLIB_LAUNCHER and workers > 1:
        return _joblib_loops(launcher, workers, source)
    if hasattr(launcher, "run_workers"):  # the project's submitit launchers
        return launcher.run_workers(workers, source, work)
    return work(source, 0, lambda overrides, number: _one(launcher, overrides, number))


def _one(launcher: Any, overrides: Sequence[str], number: int) -> Any:
    """One job through the launcher's own ``launch`` (numbered ``number``)."""
    returns = launcher.launch([list(overrides)], initial_job_idx=number)
    return returns[0] if returns else None


def lanes(workers: int, source: JobSource, run_job: RunJob) -> list[tuple[int, Any]]:
    """``workers`` loops as threads of this process, each running a job through ``run_job`` (which waits for it)."""
    results: list[list[tuple[int, Any]]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []

    def lane(k: int) -> None:
        try:
            results[k] = work(source, k, run_job)
        except BaseException as e:  # noqa: BLE001 -- raised again below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=lane, args=(k,), name=f"sweep-lane-{k}") for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [pair for lane_results in results for pair in lane_results]


def _joblib_loops(launcher: Any, workers: int, source: JobSource) -> list[tuple[int, Any]]:
    """``workers`` loky processes, each a loop running its jobs as Hydra's joblib launcher runs one."""
    from hydra.core.singleton import Singleton
    from joblib import Parallel, delayed

    context, config, task = launcher.hydra_context, launcher.config, launcher.task_function
    state = Singleton.get_state()
    job = _JoblibJob(context, config, task, state)
    log.info("%d workers (joblib), each taking its next job as its last one ends", workers)
    per_worker = Parallel(n_jobs=workers, backend="loky")(delayed(work)(source, k, job) for k in range(workers))
    return [pair for pairs in per_worker for pair in pairs]


class _JoblibJob:
    """Runs one job in a joblib worker as Hydra's joblib launcher does (picklable, unlike a closure)."""

    def __init__(self, context: Any, config: Any, task: Any, state: Any) -> None:
        self.context, self.config, self.task, self.state = context, config, task, state

    def __call__(self, overrides: Sequence[str], number: int) -> Any:
        from hydra_plugins.hydra_joblib_launcher._core import execute_job

        try:
            return execute_job(number, list(overrides), self.context, self.config, self.task, self.state)
        except Exception as e:  # noqa: BLE001 -- Hydra's own job failed to start: the source settles it
            log.error("job %d could not run: %s", number, error_line(e))
            return None
