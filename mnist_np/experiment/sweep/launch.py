"""A sweep's launches, in the sweep's process: every member of a launch ends with a record, even when the launch fails.

A launch that raises -- joblib's pool broken by a worker the OOM killer
took -- does not end the sweep: members it never started are launched
again, members still running are waited for, and the rest are settled
from their dirs (:func:`settle_member`): the dead closed FAILED ("killed
from outside", with what the launcher said), the never-started recorded.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig

from mnist_np.common.errors import error_line
from mnist_np.experiment.sweep.info import SweepInfo
from mnist_np.experiment.sweep.records import Fate, fate, record_failure
from mnist_np.tracking.conventions import KILLED_REASON
from mnist_np.tracking.journal import read_run_file
from mnist_np.tracking.runs import close_run
from mnist_np.tracking.sync import sync_output_dir
from mnist_np.tracking.tracker import MlflowTracker

log = logging.getLogger(__name__)
RELAUNCHES = 2  # more launches for members a broken launch never started
ALIVE_POLL_SECONDS = 1.0  # how often a sweep looks whether a member still in a launch that failed has ended


ComposeJob = Callable[[Sequence[str]], DictConfig]


def job_composer(hydra_context: Any, config: DictConfig) -> ComposeJob:
    """A sweeper's way to compose a job's config from its overrides, as its launcher does."""
    return lambda overrides: hydra_context.config_loader.load_sweep_config(config, list(overrides))


def launch_members(launcher: Any, jobs: Sequence[Sequence[str]], first: int, sweep_dir: Path,
                   compose_job: ComposeJob | None = None) -> list[Any]:
    """Launch jobs ``first, first + 1, ...`` (their overrides); afterwards every one of them has a record.

    Returns each job's ``JobReturn``, or None where the launcher handed none
    back. A launch that raises (a worker pool broken by a killed worker)
    does not end the sweep: members it never started are launched again
    (up to :data:`RELAUNCHES` times, while launches make progress); members
    still running are waited for; the rest are settled (see
    :func:`settle_member`). ``compose_job(overrides)`` composes a job's
    config, for the record of a member that never had one.
    """
    returns: dict[int, Any] = {}
    pending = list(range(len(jobs)))
    error: str | None = None
    for _ in range(1 + RELAUNCHES):
        failed = False
        for group in _consecutive(pending):
            try:
                for i, r in zip(group,
                                launcher.launch([list(jobs[i]) for i in group], initial_job_idx=first + group[0])):
                    returns[i] = r
            except Exception as e:  # noqa: BLE001 -- e.g. joblib's TerminatedWorkerError: settled below
                error, failed = launcher_error(e), True
                log.warning("the launcher failed for jobs %d-%d (%s); every member is settled from its dir",
                            first + group[0], first + group[-1], error)
        if not failed:
            break
        never = [i for i in pending if i not in returns and fate(member_dir(sweep_dir, first + i)) == Fate.NOT_STARTED]
        if never == pending:
            break  # the launch started nothing: launching again would not either
        if never:
            log.info("launching again the %d member(s) the failed launch never started: jobs %s", len(never),
                     ", ".join(str(first + i) for i in never))
        pending = never
        if not pending:
            break
    # A member with no JobReturn (the launch failed) or a failed one (its process died: submitit)
    # is settled from its dir.
    unsettled = {i: error if i not in returns else _failure(returns[i]) for i in range(len(jobs))}
    unsettled = {i: why for i, why in unsettled.items() if why is not None}
    info = SweepInfo.load(sweep_dir) if unsettled else None
    for i, why in unsettled.items():
        if info is not None:
            settle_member(info, first + i, jobs[i], member_dir(sweep_dir, first + i), compose_job, why)
    return [returns.get(i) for i in range(len(jobs))]


def _failure(job_return: Any) -> str | None:
    """Why a job failed outside its member's code (which records its own failures), or None."""
    from hydra.core.utils import JobStatus

    if getattr(job_return, "status", None) != JobStatus.FAILED:
        return None
    return launcher_error(job_return._return_value)


def launcher_error(e: BaseException) -> str:
    """A launcher's error in one line (joblib's worker exit codes kept: they say what killed it)."""
    line = error_line(e)
    codes = [part.strip() for part in str(e).splitlines() if "exit code" in part]
    return f"{line} ({codes[-1]})" if codes and codes[-1] not in line else line


def settle_member(info: SweepInfo, job_num: int, overrides: Sequence[str], output_dir: Path,
                  compose_job: ComposeJob | None, launcher_said: str) -> Fate:
    """After a launch that failed: wait for member ``job_num`` if it still runs, and record it if it cannot."""
    state = fate(output_dir)
    while state == Fate.ALIVE:  # a launcher that gave up on its jobs (submitit) leaves them running
        time.sleep(ALIVE_POLL_SECONDS)
        state = fate(output_dir)
    if state == Fate.DIED:
        # Its run is in MLflow, RUNNING; the journal stays without an end, so `--multirun resume=` resumes it.
        _close_dead_run(info, output_dir, f"{KILLED_REASON}; the launcher said: {launcher_said}")
    elif state == Fate.DIED_EARLY:
        record_failure(info, job_num, overrides, output_dir, _compose(compose_job, overrides),
                       f"killed: its process ended before its run started; the launcher said: {launcher_said}",
                       retry=True)
    elif state == Fate.NOT_STARTED:
        record_failure(info, job_num, overrides, output_dir, _compose(compose_job, overrides),
                       f"never started: the launcher failed ({launcher_said})", retry=True)
    return state


def _close_dead_run(info: SweepInfo, output_dir: Path, reason: str) -> None:
    """Close the RUNNING run of a member whose process died (the journal keeps no end: it is resumable)."""
    run = read_run_file(output_dir)
    try:
        if not run:  # it died between journaling its start and hearing back from MLflow
            sync_output_dir(output_dir, info.tracking_uri, info.parent_run_id)
            run = read_run_file(output_dir)
        tracker = MlflowTracker(info.tracking_uri, info.experiment_name)
        close_run(tracker.client, run["run_id"], "FAILED", reason)
    except Exception as e:  # noqa: BLE001 -- the sweep's summary closes it (as killed from outside) when it can
        log.warning("could not close the run of sweep member %s yet: %s", output_dir.name, error_line(e))


def _compose(compose_job: ComposeJob | None, overrides: Sequence[str]) -> DictConfig | None:
    if compose_job is None:
        return None
    try:
        return compose_job(overrides)
    except Exception:  # noqa: BLE001 -- recorded without its config
        return None


def member_dir(sweep_dir: Path, job_num: int) -> Path:
    """Where job ``job_num`` of the sweep writes: ``<sweep dir>/<job number>`` (``hydra.sweep.subdir`` in
    conf/config.yaml)."""
    return Path(sweep_dir) / str(job_num)


def _consecutive(indices: Sequence[int]) -> list[list[int]]:
    """``[0, 1, 3, 4, 6]`` -> ``[[0, 1], [3, 4], [6]]``: a launch numbers its jobs consecutively."""
    groups: list[list[int]] = []
    for i in indices:
        if groups and groups[-1][-1] == i - 1:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


