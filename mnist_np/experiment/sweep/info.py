"""What identifies a ``--multirun`` sweep: its ``mlflow_sweep.json``, what it sweeps, and the names of its runs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from mnist_np.common.files import atomic_write_text
from mnist_np.experiment.config.overrides import parse_override
from mnist_np.tracking.conventions import MAX_NAME_CHARS, PARENT_RUN_TAG

SWEEP_FILE = "mlflow_sweep.json"
# What members may be ranked by (a search's objectives; a Pareto front): a run's final metrics.
# Members are chosen on validation, never on test; val_* name the best epoch's figures.
OBJECTIVES = {
    "val_accuracy": "best_val_accuracy",
    "val_loss": "best_val_loss",
    "train_seconds": "train_seconds",
    "epochs_trained": "epochs_trained",
}
# Keys that default_run_name already spells out (mlp128x2-sgd-lr0.1-bs128, -elastic when augmented).
NAME_KEYS = frozenset(
    {"model.hidden_size", "model.num_hidden_layers", "optimizer", "optimizer.name", "optimizer.lr",
     "trainer.batch_size", "data", "data.name", "augment", "augment.name"}
)


@dataclass
class SweepInfo:
    """What members need to join the sweep, shared through ``<sweep dir>/mlflow_sweep.json``."""

    parent_run_id: str
    tracking_uri: str
    experiment_name: str
    name: str
    sweep_dir: str
    swept: dict[str, str] = field(default_factory=dict)  # key -> its sweep spec, e.g. "64,128,256"
    # Every store the sweep has a parent run in -> that run's id (the sweep's
    # own, and copies made by syncing its dir into other stores).
    parents: dict[str, str] = field(default_factory=dict)
    # A guided search's settings (mnist_np.experiment.search.study.SearchSettings as a dict):
    # its members report to their trials through the study's storage.
    search: dict[str, Any] | None = None
    # How often the sweep was continued (`--multirun resume=...`): a member of a
    # continued sweep that already has a run in its dir resumes or keeps that run.
    resumes: int = 0
    # Every member returned (the sweep ran to its end, failures or not): nothing to resume.
    completed: bool = False
    # mlflow.register_as: the registered model whose alias "champion" the sweep points at its best member.
    register_as: str | None = None
    # Workers taking members at their own pace (an asynchronous search, a packed grid): the parent's
    # workers_busy_fraction is over this many (a search, a packed grid); None for a grid launched in batches.
    workers: int | None = None

    def save(self) -> Path:
        """Write ``mlflow_sweep.json`` atomically: members in other processes read it at any time."""
        return atomic_write_text(Path(self.sweep_dir) / SWEEP_FILE, json.dumps(asdict(self), indent=2))

    def member_tags(self, job_num: int | None) -> dict[str, str]:
        """The tags that make a run member ``job_num`` of this sweep (and, in a search, the trial of that number)."""
        tags = {PARENT_RUN_TAG: self.parent_run_id, "sweep_job_num": str(job_num)}
        if self.search is not None:
            tags["optuna.trial_number"] = str(job_num)  # the search sweeper launches trial n as job n
        return tags

    @classmethod
    def load(cls, sweep_dir: str | Path) -> "SweepInfo | None":
        path = Path(sweep_dir) / SWEEP_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


def swept_parameters(task_overrides: Sequence[str], sweeper_params: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The keys a sweep varies, with their specs: ``{"model.hidden_size": "64,128,256"}``.

    Grid sweeps come from the command-line overrides; guided searches (Optuna)
    also from ``hydra.sweeper.params``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    # The command line wins over the config's search space, as in the Optuna sweeper.
    swept = {str(key): str(spec) for key, spec in (sweeper_params or {}).items()}
    for o in OverridesParser.create().parse_overrides(list(task_overrides)):
        if o.is_sweep_override():
            swept[o.key_or_group] = o.input_line.split("=", 1)[1]
    return swept


def sweep_run_name(swept: Mapping[str, str]) -> str:
    """``sweep model.hidden_size=64,128 optimizer.lr=0.01,0.1`` (MLflow caps names at 250 characters)."""
    name = "sweep " + " ".join(f"{k}={v}" for k, v in swept.items()) if swept else "sweep"
    return name[:MAX_NAME_CHARS]


def member_run_name(base: str, job_overrides: Sequence[str], swept: Mapping[str, str], explicit_base: bool) -> str:
    """A member's name: the base name plus each swept value the base does not already show.

    ``mlp128-sgd-lr0.1-bs128`` stays as is in a sweep over hidden size and lr;
    a sweep over weight decay gives ``mlp128-sgd-lr0.1-bs128-weight_decay=0.0005``.
    Members differ exactly where their overrides differ, so names are unique.
    """
    parts = [base]
    for line in job_overrides:
        key, value = parse_override(line)
        if key in swept and (explicit_base or key not in NAME_KEYS):
            parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return "-".join(parts)[:MAX_NAME_CHARS]


def parent_params(task: Sequence[str], swept: Mapping[str, str]) -> dict[str, str]:
    """The parent run's params: the sweep's command-line overrides, then its search space."""
    params = dict(parse_override(line) for line in task)
    params.update(swept)
    return params
