"""A sweep's parent run in MLflow: opened before any member starts, reopened when the sweep is continued."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mnist_np.common.procs import process_identity
from mnist_np.experiment.run.provenance import git_tags
from mnist_np.experiment.sweep.info import SweepInfo, parent_params, sweep_run_name, swept_parameters
from mnist_np.tracking.conventions import PROCESS_TAG, label_tags
from mnist_np.tracking.runs import reap_dead_runs
from mnist_np.tracking.tracker import MlflowTracker
from mnist_np.tracking.uris import default_tracking_uri

log = logging.getLogger(__name__)


def open_sweep(config: DictConfig) -> SweepInfo:
    """Create the store (once, before parallel workers could race to migrate it), the parent run, and
    ``mlflow_sweep.json``."""
    sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
    task = list(config.hydra.overrides.task)
    search_space = config.hydra.sweeper.get("params")  # Optuna's; the basic sweeper's is null
    swept = swept_parameters(task, OmegaConf.to_container(search_space) if search_space else None)
    uri = config.mlflow.tracking_uri or default_tracking_uri()
    tracker = MlflowTracker(uri, config.mlflow.experiment_name)
    name = config.mlflow.sweep_name or sweep_run_name(swept)
    tags = {
        "sweep_dir": str(sweep_dir),
        "overrides": " ".join(task),
        "sweeper": str(config.hydra.sweeper.get("_target_", "")).rsplit(".", 1)[-1],
        "launcher": str(config.hydra.launcher.get("_target_", "")).rsplit(".", 1)[-1],
        "mlflow.source.name": "scripts/train.py --multirun",
        **label_tags(list(config.get("tags") or []), config.get("notes")),
        **git_tags(),
    }
    reap_dead_runs(tracker.client, tracker.experiment_id)
    run_id = tracker.start(name, parent_params(task, swept), {**tags, PROCESS_TAG: process_identity()})
    info = SweepInfo(run_id, uri, config.mlflow.experiment_name, name, str(sweep_dir), swept, parents={uri: run_id},
                     register_as=config.mlflow.get("register_as"))
    info.save()
    log.info("MLflow parent run %r (%s) for the sweep in %s", name, run_id, sweep_dir)
    return info


def reopen_sweep(sweep_dir: Path) -> SweepInfo:
    """The killed sweep in ``sweep_dir`` continued: its parent run RUNNING again, owned by this process.

    Member runs its killed process left RUNNING are closed (FAILED, killed
    from outside) first; the parent itself is kept. ``resumes`` goes up, so
    that members which already have a run in their dir continue it
    (:func:`mnist_np.experiment.run.single.run`).
    """
    info = SweepInfo.load(sweep_dir)
    assert info is not None, f"{sweep_dir} holds no sweep"  # checked by the command before Hydra started
    info.resumes += 1
    info.save()
    parent = MlflowTracker(info.tracking_uri, info.experiment_name, run_id=info.parent_run_id)
    reap_dead_runs(parent.client, parent.experiment_id, keep=info.parent_run_id)
    parent.reopen({PROCESS_TAG: process_identity(), "resumed": "true"})
    log.info("MLflow parent run %r (%s) continued for the sweep in %s", info.name, info.parent_run_id, sweep_dir)
    return info
