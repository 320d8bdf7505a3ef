"""Every member of a sweep leaves a record -- a FAILED child with its reason -- whatever stopped it.

A member records itself: its run ends FINISHED, or FAILED with its reason,
in MLflow and in its journal. What it cannot record, someone records for it,
always from the member's own output dir (journal first, then MLflow), so that
nothing depends on MLflow answering at that moment:

- a member that stops before its run exists -- its data cannot be obtained,
  its store does not answer, its config is invalid, any other error -- is
  recorded by its own process (:func:`run_member`);
- a member whose process died -- SIGKILL, the kernel's OOM killer, a worker
  pool that broke -- is recorded by the sweep's process after the launch
  that ran it (:func:`launch_members`), with what the launcher said; one the
  launch never started (a broken pool takes its queue with it) is launched
  again, and recorded only if that fails too;
- a record that could not reach MLflow then (the store was down) is sent by
  the sweep's summary when it ends (:func:`mnist_np.experiment.sweep_summary.close_sweep`),
  or later by ``scripts/sync.py <sweep dir>``.

A member that failed for want of something outside it (``retry`` in its
journal: its data, its store, its process) is run again by ``--multirun
resume=``, into the same MLflow run; an invalid config or a diverged loss
would fail the same way again and is kept.
"""

from __future__ import annotations

import logging
import math
import time
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from mnist_np.common import locks
from mnist_np.common.errors import error_line
from mnist_np.common.files import atomic_write_text
from mnist_np.experiment.builders import default_run_name
from mnist_np.experiment.context import hydra_context
from mnist_np.experiment.schema import ConfigError
from mnist_np.experiment.sweep_info import SweepInfo, member_run_name
from mnist_np.tracking.conventions import KILLED_REASON, OUTPUT_DIR_TAG
from mnist_np.tracking.journal import JOURNAL_FILE, Journal, read_journal, read_run_file
from mnist_np.tracking.runs import close_run
from mnist_np.tracking.sync import sync_output_dir
from mnist_np.tracking.tracker import MlflowTracker, flatten
from mnist_np.tracking.uris import TrackingUnavailable

log = logging.getLogger(__name__)
RELAUNCHES = 2  # more launches for members a broken launch never started
ALIVE_POLL_SECONDS = 1.0  # how often a sweep looks whether a member still in a launch that failed has ended


class Fate(str, Enum):
    """What a member's output dir says of it."""

    ENDED = "ended"  # its journal says how its run ended
    ALIVE = "alive"  # a live process holds its lock
    DIED = "died"  # its run started and never ended, and no process holds it
    DIED_EARLY = "died early"  # it started (its dir exists) and died before its run did
    NOT_STARTED = "not started"  # no dir: the launcher never started it


def fate(output_dir: Path) -> Fate:
    """The member in ``output_dir``, as its files and its lock tell."""
    if not output_dir.is_dir():
        return Fate.NOT_STARTED
    if locks.holder(output_dir) is not None:
        return Fate.ALIVE
    journal = output_dir / JOURNAL_FILE
    state = read_journal(journal) if journal.is_file() else None
    if state is not None and state.end is not None:
        return Fate.ENDED
    if state is not None and state.start is not None:
        return Fate.DIED
    return Fate.DIED_EARLY


# ------------------------------------------------------------------ in the member's process


def run_member(cfg: DictConfig) -> float:
    """Run one sweep member; whatever stops it, it leaves a record. Returns what sweepers maximise (NaN: failed)."""
    from mnist_np.experiment.run import run  # the single run: sweeps build on it, never the other way

    try:
        return run(cfg).val_accuracy
    except ConfigError as e:
        log.error("invalid config: %s", e)
        record_failed_member(cfg, f"invalid config: {e}", retry=False, base_name="invalid-config")
    except (locks.LockHeld, locks.LockUnsupported) as e:
        log.error("%s", e)  # another process owns the member's dir: it is that process's to record
    except Exception as e:  # noqa: BLE001 -- a member's failure is recorded; the sweep goes on
        if _expected(e):  # its message says what to do (a DataError lists the sources it tried)
            log.error("sweep member failed: %s: %s", type(e).__name__, e)
        else:
            log.exception("sweep member failed: %s", error_line(e))
        # A run that existed has closed itself FAILED already (its journal says so): then this does nothing.
        record_failed_member(cfg, f"{type(e).__name__}: {e}", retry=True)
    return math.nan


def _expected(e: Exception) -> bool:
    """Failures the user can act on from their one line (no traceback in the log)."""
    from mnist_np.data import DataError
    from mnist_np.train.loop import TrainingDiverged

    return isinstance(e, (DataError, TrackingUnavailable, TrainingDiverged))


def record_failed_member(cfg: DictConfig | None, reason: str, retry: bool, base_name: str | None = None) -> None:
    """This process's sweep member stopped with ``reason``: record it from its output dir (see :func:`record_failure`)."""
    ctx = hydra_context()
    info = SweepInfo.load(ctx.sweep_dir) if ctx.sweep_dir else None
    if info is None or ctx.output_dir is None or ctx.job_num is None:
        return
    record_failure(info, ctx.job_num, ctx.overrides, ctx.output_dir, cfg, reason, retry, base_name)


# ------------------------------------------------------------------ from either process


def record_failure(info: SweepInfo, job_num: int, overrides: Sequence[str], output_dir: Path, cfg: DictConfig | None,
                   reason: str, retry: bool, base_name: str | None = None) -> None:
    """Record member ``job_num`` as FAILED with ``reason``: in its journal first, then as a child run in MLflow.

    A run that already ended is left as it is. One that started and never
    ended gets its end. A member that never had a run gets one that starts
    and ends at once, named and tagged as its run would have been, with its
    config as params (and, with ``retry``, saved in ``config/`` so that a
    continued sweep can train it). If MLflow does not answer, the record
    waits in the journal for the sweep's end or ``scripts/sync.py``.
    """
    journal = output_dir / JOURNAL_FILE
    state = read_journal(journal) if journal.is_file() else None
    if state is not None and state.end is not None:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    notes = Journal(journal)
    if state is None or state.start is None:
        resolved = _resolved(cfg)
        if retry and resolved is not None and not (output_dir / "config" / "config.yaml").is_file():
            atomic_write_text(output_dir / "config" / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
        name = _member_name(cfg, base_name, overrides, info)
        tags = {**info.member_tags(job_num), "overrides": " ".join(overrides), OUTPUT_DIR_TAG: str(output_dir),
                "mlflow.source.name": "scripts/train.py"}
        notes.note_start(name, flatten(resolved or {}), tags, info.experiment_name, info.tracking_uri)
    notes.note_end("FAILED", reason[:8000], retry=retry)
    send_record(info, output_dir)


def send_record(info: SweepInfo, output_dir: Path) -> bool:
    """Send member ``output_dir``'s journal to the sweep's store, as a child of its parent; False if MLflow is down."""
    try:
        report = sync_output_dir(output_dir, info.tracking_uri, info.parent_run_id)
        log.info("recorded sweep member %s in MLflow: %s", output_dir.name, report.line())
        return True
    except Exception as e:  # noqa: BLE001 -- the record is safe in the journal; the sweep's end sends it
        log.warning("sweep member %s is recorded in %s but not in MLflow yet (%s); the sweep's summary sends it",
                    output_dir.name, output_dir, error_line(e))
        return False


def _resolved(cfg: DictConfig | None) -> dict[str, Any] | None:
    """The config as plain data (without ``hydra``), or None when it cannot be resolved."""
    if cfg is None:
        return None
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 -- an unresolvable config is recorded without params
        return None
    if not isinstance(resolved, dict):
        return None
    resolved.pop("hydra", None)
    return resolved


def _member_name(cfg: DictConfig | None, base_name: str | None, overrides: Sequence[str], info: SweepInfo) -> str:
    """The name its run would have had (``base_name``, e.g. ``invalid-config``, when the config cannot give one)."""
    base = base_name
    if base is None:
        try:
            base = (cfg.mlflow.run_name if cfg is not None else None) or default_run_name(cfg)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 -- a config too broken to name: still recorded
            base = "failed"
    explicit = base_name is not None or bool(cfg is not None and cfg.get("mlflow", {}).get("run_name"))
    return member_run_name(str(base), list(overrides), info.swept, explicit_base=explicit)


# ------------------------------------------------------------------ in the sweep's process

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
                for i, r in zip(group, launcher.launch([list(jobs[i]) for i in group], initial_job_idx=first + group[0])):
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
    # A member with no JobReturn (the launch failed) or a failed one (its process died: submitit) is settled from its dir.
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
                       f"killed: its process ended before its run started; the launcher said: {launcher_said}", retry=True)
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
    """Where job ``job_num`` of the sweep writes: ``<sweep dir>/<job number>`` (``hydra.sweep.subdir`` in conf/config.yaml)."""
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


def unrecorded_members(sweep_dir: Path) -> list[Path]:
    """Member dirs whose journal holds a run that MLflow never heard of (no run file): records waiting to be sent."""
    return [journal.parent for journal in sorted(Path(sweep_dir).glob(f"*/{JOURNAL_FILE}"))
            if not read_run_file(journal.parent) and locks.holder(journal.parent) is None]


def resumable(output_dir: Path) -> bool:
    """Whether ``--multirun resume=`` would train member ``output_dir`` (again): killed, interrupted, or failed for want of something."""
    journal = output_dir / JOURNAL_FILE
    if not journal.is_file():
        return output_dir.is_dir()
    end = read_journal(journal).end
    return end is None or end.get("status") == "KILLED" or bool(end.get("retry"))
