"""Continuing an interrupted run, given its MLflow run id or its output dir: ``resume=<run id | dir>``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from mnist_np.common.locks import locked
from mnist_np.common.procs import process_identity
from mnist_np.experiment.config.builders import load_splits
from mnist_np.experiment.config.compose import load_run_config
from mnist_np.experiment.config.schema import ConfigError
from mnist_np.experiment.run.context import blas_threads, hydra_context
from mnist_np.experiment.run.execute import Job, RunResult, execute
from mnist_np.experiment.run.outputs import EpochLogger, log_also_to
from mnist_np.tracking.conventions import PROCESS_TAG
from mnist_np.tracking.journal import JOURNAL_FILE, RUN_FILE, JournalState, read_journal, read_run_file
from mnist_np.tracking.queries import logged_steps, run_output_dir, run_status
from mnist_np.tracking.sync import sync_output_dir
from mnist_np.tracking.tracker import MlflowTracker
from mnist_np.tracking.uris import default_tracking_uri
from mnist_np.train.checkpoint import TrainingState, latest_checkpoint, load_state

log = logging.getLogger(__name__)


def resume(target: str, tracking_uri: str | None = None, sweep_member: bool = False) -> RunResult:
    """Continue an interrupted run, given its MLflow run id or its output dir.

    The run's own saved config is used (checked against the schema first:
    it is data read back from disk), its newest checkpoint restores weights,
    optimizer state, random generators and history, and training goes on in
    the same output dir and the same MLflow run -- which ends FINISHED with
    one metric value per epoch. The final weights are bit-identical to an
    uninterrupted run's on the same machine. A run that already finished is
    left alone. ``sweep_member``: the run is a member of a continued sweep
    (its model is registered by the sweep, if at all).

    Raises:
        ConfigError: one line, before the run is touched: no such run or dir,
        no saved config, an invalid config, an unreadable checkpoint.
        LockHeld: another live process trains the run (named in the one line); nothing is touched.
    """
    output_dir = _output_dir(target, tracking_uri)
    config_file = output_dir / "config" / "config.yaml"
    info = read_run_file(output_dir)
    if not (info or started(output_dir)) or not config_file.exists():
        raise ConfigError(f"resume={target}: {output_dir} holds no run to resume (expected {RUN_FILE} "
                          "and config/config.yaml)")
    # First, before anything is read for real or written: one writer per run (a second resume,
    # a requeue, or the run's own process, still alive). The lock is held until the run is closed.
    with locked(output_dir, f"run {info['run_id']} ({output_dir})" if info else f"run {output_dir}"):
        if not info:
            # Killed between MLflow's making the run and writing mlflow_run.json: the run is found by
            # its output dir (or made as it would have been, if MLflow never got it) and its file
            # written, never a second run for one dir.
            sync_output_dir(output_dir)
            info = read_run_file(output_dir)
        return _resume(target, output_dir, info, sweep_member)


def started(output_dir: Path) -> bool:
    """Whether the run in ``output_dir`` began: its journal records the run's start (its run file may not exist)."""
    journal = output_dir / JOURNAL_FILE
    return journal.is_file() and read_journal(journal).start is not None


def _resume(target: str, output_dir: Path, info: dict[str, str], sweep_member: bool) -> RunResult:
    """The resumption itself, with the run's output dir locked by this process."""
    config_file = output_dir / "config" / "config.yaml"
    cfg = load_run_config(config_file.read_text(), source=str(config_file))
    journal = output_dir / JOURNAL_FILE
    sent = read_journal(journal) if journal.is_file() else JournalState()
    tracker = MlflowTracker(info["tracking_uri"], info["experiment_name"], run_id=info["run_id"], journal=journal,
                            run_name=str((sent.start or {}).get("run_name", "")))
    summary = output_dir / "summary.json"
    if run_status(tracker.client, info["run_id"]) == "FINISHED" and summary.exists():
        log.info("run %s already finished; nothing to resume", info["run_id"])
        print(f"run {info['run_id']} already finished ({output_dir}); nothing to do")
        return RunResult(info["run_id"], output_dir, json.loads(summary.read_text())["metrics"])
    state = _latest_state(target, output_dir)
    done = state.epoch if state else 0
    # The run's own train.log (uploaded at the end) goes on where it stopped;
    # Hydra's log for this command stays in the command's own run dir too.
    with log_also_to(output_dir / "train.log"):
        raw, splits = load_splits(cfg)
        tracker.reopen({PROCESS_TAG: process_identity(), "pid": str(os.getpid()), "resumed_from_epoch": str(done)})
        history = state.result.history if state else []
        _reconcile_epochs(tracker, history)
        EpochLogger.rewrite(output_dir / "metrics.jsonl", history)
        log.info("resuming run %s in %s after epoch %d", info["run_id"], output_dir, done)
        job = Job(cfg, tracker, raw, splits, output_dir, config_file.read_text(), blas_threads(cfg, hydra_context()),
                  register_as=None if sweep_member else cfg.mlflow.register_as)
        # A member recorded FAILED before it could train (its data or store missing) has no dataset input yet.
        return execute(job, state=state, resumed=True, log_dataset=not sent.datasets)


def _output_dir(target: str, tracking_uri: str | None) -> Path:
    """``target`` if it is a folder, else the output dir the run ``target`` recorded."""
    output_dir = Path(target)
    if output_dir.is_dir():
        return output_dir
    try:
        return run_output_dir(target, tracking_uri or default_tracking_uri())
    except ValueError as e:
        raise ConfigError(f"resume={target!r} is not allowed: {e}; expected a run id in that store "
                          "or a run's output dir") from None


def _latest_state(target: str, output_dir: Path) -> TrainingState | None:
    """The newest checkpoint's training state (None before the first one was written)."""
    latest = latest_checkpoint(output_dir / "checkpoints")
    try:
        return load_state(latest) if latest else None
    except (ValueError, KeyError, OSError) as e:  # a damaged or tampered file read back from the run
        raise ConfigError(f"resume={target!r} is not allowed; expected a run with a "
                          f"readable checkpoint ({e})") from None


def _reconcile_epochs(tracker: MlflowTracker, history: list[dict[str, float]], probe: str = "train_loss") -> None:
    """Make MLflow hold exactly epochs 1..len(history) of the resumed run, each once.

    The checkpoint is written before MLflow hears of an epoch, so epochs the
    checkpoint has but MLflow missed are logged now; epochs MLflow already
    has past the checkpoint are re-run with identical results and not logged
    again.
    """
    logged = logged_steps(tracker.client, tracker.run_id or "", probe)
    for epoch, metrics in enumerate(history, start=1):
        if epoch not in logged:
            tracker.log_metrics(metrics, step=epoch)
    tracker.skip_steps = {step for step in logged if step > len(history)}
