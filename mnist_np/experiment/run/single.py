"""``run(cfg)``: a composed config -> a validated, tracked training run (or the resumption of one).

Order matters: validate first (nothing is created for a bad config), open
the tracking store (fail fast if it is unreachable), load the data, and only
then open the MLflow run, so every run that exists has a real training
behind it.
"""

from __future__ import annotations

import logging
import os
import platform
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mnist_np.common.locks import locked
from mnist_np.common.paths import OUTPUTS_DIR
from mnist_np.common.procs import process_identity
from mnist_np.experiment.config.builders import default_run_name, load_splits
from mnist_np.experiment.config.validation import validate
from mnist_np.experiment.run.context import HydraContext, blas_threads, hydra_context
from mnist_np.experiment.run.execute import Job, execute
from mnist_np.experiment.run.member import Member
from mnist_np.experiment.run.outputs import write_config_files
from mnist_np.experiment.run.provenance import git_tags
from mnist_np.experiment.run.results import RunResult
from mnist_np.experiment.run.resume import resume
from mnist_np.tracking.conventions import OUTPUT_DIR_TAG, PROCESS_TAG, label_tags
from mnist_np.tracking.journal import JOURNAL_FILE, write_run_file
from mnist_np.tracking.runs import reap_dead_runs
from mnist_np.tracking.tracker import MlflowTracker, flatten
from mnist_np.tracking.uris import default_tracking_uri

log = logging.getLogger(__name__)


def run(
    cfg: DictConfig,
    output_dir: Path | None = None,
    overrides: list[str] | None = None,
    extra_tags: dict[str, str] | None = None,
    member: Member | None = None,
) -> RunResult:
    """Train the network ``cfg`` describes and record everything in MLflow and ``output_dir``.

    With ``cfg.resume`` set, continue that interrupted run instead (see
    :func:`mnist_np.experiment.run.resume.resume`).

    Args:
        cfg: a composed config (from ``@hydra.main`` or :func:`mnist_np.experiment.config.compose.compose`).
        output_dir: where files go; defaults to Hydra's run dir.
        overrides: the command-line overrides to record; defaults to Hydra's.
        extra_tags: more tags for the MLflow run (e.g. ``reproduces``).
        member: what the sweep this run belongs to hands it (see :mod:`mnist_np.experiment.run.member`).

    Raises:
        ConfigError: before anything is created, for an invalid config.
        DataError: when no data source works (no MLflow run is created).
        TrainingDiverged: the loss went NaN/inf (the run ends FAILED).
        LockHeld: another live process writes ``output_dir``.
    """
    if cfg.get("resume"):
        return resume(str(cfg.resume), cfg.mlflow.tracking_uri)
    ctx = hydra_context()
    output_dir = Path(output_dir or ctx.output_dir
                      or OUTPUTS_DIR / "runs" / datetime.now().strftime("%Y-%m-%d/%H-%M-%S.%f"))
    # A continued sweep's member, or one Slurm started again, that had started before: kept, or resumed.
    if member is not None and member.continued is not None and (continued := member.continued(output_dir)) is not None:
        return continued
    validate(cfg)
    overrides = ctx.overrides if overrides is None else overrides
    # One writer per run: held until the run is closed (see mnist_np.common.locks).
    with locked(output_dir, f"run {output_dir}"):
        return _new_run(cfg, ctx, output_dir, member, overrides, extra_tags)


def _new_run(cfg: DictConfig, ctx: HydraContext, output_dir: Path, member: Member | None, overrides: list[str],
             extra_tags: dict[str, str] | None) -> RunResult:
    """The run itself, once its config is valid and its output dir is this process's."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    config_yaml = OmegaConf.to_yaml(OmegaConf.create(resolved))
    write_config_files(output_dir, config_yaml, overrides)

    tracking_uri = cfg.mlflow.tracking_uri or default_tracking_uri()
    tracker = MlflowTracker(tracking_uri, cfg.mlflow.experiment_name, journal=output_dir / JOURNAL_FILE)
    # Runs whose process was killed from outside (kill -9, out of memory) never closed
    # themselves; whoever next uses the experiment on this host closes them.
    reap_dead_runs(tracker.client, tracker.experiment_id)
    raw, splits = load_splits(cfg)

    threads = blas_threads(cfg, ctx)
    run_name, tags = _name_and_tags(cfg, overrides, output_dir, member)
    run_id = tracker.start(run_name, flatten(resolved), {**tags, **(extra_tags or {})})
    write_run_file(output_dir, run_id, tracking_uri, cfg.mlflow.experiment_name)
    log.info("MLflow run %s (%s) in %s, %d BLAS thread(s)", run_name, run_id, tracking_uri, threads)
    # In a sweep only the best member is registered, by the sweep (mnist_np.experiment.sweep.summary).
    register_as = cfg.mlflow.register_as if member is None else None
    stop_rule = member.stop_rule if member is not None else None  # a guided search's member reports to its trial
    return execute(Job(cfg, tracker, raw, splits, output_dir, config_yaml, threads, stop_rule, register_as))


def _name_and_tags(cfg: DictConfig, overrides: list[str], output_dir: Path,
                   member: Member | None) -> tuple[str, dict[str, str]]:
    """The run's name (a sweep member's shows what it sweeps) and its tags: origin, process, sweep, git."""
    run_name = cfg.mlflow.run_name or default_run_name(cfg)
    if member is not None:
        run_name = member.name(run_name, bool(cfg.mlflow.run_name))
    tags = {
        "overrides": " ".join(overrides),
        OUTPUT_DIR_TAG: str(output_dir),
        "mlflow.source.name": "scripts/train.py",
        "mlflow.source.type": "LOCAL",
        "test_weights": cfg.trainer.test_weights,
        "host": platform.node(),
        "pid": str(os.getpid()),
        PROCESS_TAG: process_identity(),
        **label_tags(list(cfg.tags), cfg.notes),
        **(member.tags if member is not None else {}),
        **git_tags(),
    }
    return run_name, tags
