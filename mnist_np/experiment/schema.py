"""The config's schemas: dataclasses Hydra type-checks every composed config against.

One source of every default: a field either holds the value its YAML file
in ``conf/`` holds (a test composes every group option and compares) or is
``MISSING`` where the options of a group differ (``data.name``, the Adam
family's ``weight_decay``), so a config read back from a run that lacks a
key fails validation instead of training with some other value.

Components are named, never imported: ``optimizer.name: adam`` is looked up
in :mod:`mnist_np.nn.registry`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from mnist_np.common.paths import CONF_DIR, PROJECT_ROOT
from mnist_np.nn.activations import DEFAULT_NEGATIVE_SLOPE

TRAIN_IMAGES = 60_000  # both datasets ship 60k training images before the val split
ROOT_ENV = "MNIST_NP_ROOT"  # conf/config.yaml reads the project root from here


class ConfigError(ValueError):
    """An invalid config value; ``str()`` is the one line shown to the user."""


@dataclass
class DataConfig:
    name: str = MISSING  # mnist | fashion_mnist: the group's option sets it
    dir: Optional[str] = None  # a folder with the four IDX files (raw or .gz); tried first
    cache_dir: Optional[str] = None  # null: $MNIST_NP_DATA_DIR, else ~/.cache/mnist-np
    val_size: int = 5_000
    split_seed: int = 0  # the validation split's own seed: one split for all runs of a sweep
    train_limit: Optional[int] = None  # train on the first N training images (smoke runs)


@dataclass
class ModelConfig:
    name: str = "mlp"
    hidden_size: int = 128
    num_hidden_layers: int = 1
    activation: str = "relu"
    negative_slope: float = DEFAULT_NEGATIVE_SLOPE  # leaky_relu only
    init: str = "he"
    init_scale: float = 0.01  # init=normal only: standard deviation
    dropout: float = 0.0


@dataclass
class SGDConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0005


@dataclass
class AdamConfig:
    name: str = MISSING  # adam | adamw
    lr: float = 0.001
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = MISSING  # L2 for adam, decoupled for adamw: each option sets its own


@dataclass
class ScheduleConfig:
    name: str = MISSING  # constant | step | cosine
    warmup_epochs: float = 0.0
    step_size: int = 10  # step: epochs between decays
    gamma: float = 0.1  # step: decay factor
    min_lr: float = 0.0  # cosine: final learning rate


@dataclass
class TrainerConfig:
    epochs: int = 20
    batch_size: int = 128
    eval_batch_size: int = 10_000
    dtype: str = "float32"
    monitor: str = "val_loss"  # picks the best epoch and drives early stopping
    early_stopping_patience: Optional[int] = None
    test_weights: str = "last"  # score the test set with the last (final.npz) or best epoch's weights (best.npz)
    progress: Optional[bool] = None  # null: a bar on a terminal, one line per epoch otherwise
    threads: Optional[int] = None  # cores (shard processes or BLAS threads); null: all, shared out among parallel sweep workers
    checkpoint_every: int = 1  # full training state (for resume) every N epochs, and after the last
    keep_checkpoints: int = 2  # how many of them stay on disk


@dataclass
class NoAugmentConfig:
    name: str = "none"  # the training images as they are (no transform runs at all)


@dataclass
class ShiftConfig:
    name: str = "shift"
    max_shift: int = 2  # whole pixels each way, per axis


@dataclass
class AffineConfig:
    name: str = "affine"
    rotation: float = 10.0  # degrees each way
    scale: float = 0.1  # zoom in [1 - scale, 1 + scale]
    shear: float = 5.0  # degrees each way
    translate: float = 2.0  # pixels each way, per axis


@dataclass
class ElasticConfig:
    name: str = "elastic"
    alpha: float = 34.0  # displacement scale (Simard et al. 2003: 34)
    sigma: float = 4.0  # the Gaussian smoothing the random field, pixels (Simard et al.: 4)


@dataclass
class MlflowConfig:
    tracking_uri: Optional[str] = "${oc.env:MLFLOW_TRACKING_URI,null}"  # null: sqlite mlflow.db at the project root
    experiment_name: str = "mnist-np"
    run_name: Optional[str] = None  # null: built from the config, e.g. mlp128-sgd-lr0.1-bs128
    sweep_name: Optional[str] = None  # the parent run of a --multirun sweep; null: from the swept overrides
    log_plots: bool = True
    log_checkpoints: bool = False  # also upload every training-state checkpoint to the run
    log_system_metrics: bool = True  # CPU, memory, disk use over the run (MLflow's monitor, psutil): system/* metrics
    register_as: Optional[str] = None  # a registered model: a run's model becomes a version; a sweep's best member, alias champion


@dataclass
class Config:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    optimizer: Any = MISSING  # SGDConfig or AdamConfig, chosen by the optimizer group
    schedule: ScheduleConfig = MISSING
    trainer: TrainerConfig = MISSING
    mlflow: MlflowConfig = MISSING
    augment: Any = MISSING  # one of the augment schemas, chosen by the augment group
    seed: int = 0
    tags: list[str] = field(default_factory=list)  # labels: MLflow tags <label>=true on the run (and a sweep's parent)
    notes: Optional[str] = None  # the run's description in MLflow's UI
    resume: Optional[str] = None  # a run id or output dir: continue that interrupted run instead


SEARCH_SWEEPER = "hydra_plugins.mnist_np_optuna.optuna_sweeper.OptunaSweeper"


@dataclass
class SearchSweeperConfig:
    """``hydra.sweeper`` of a guided search (``+sweep=optuna``): Hydra's plugin config, so it names its class."""

    _target_: str = SEARCH_SWEEPER
    n_trials: int = 20  # trials in the study, counting COMPLETE, PRUNED and FAIL ones
    n_jobs: int = 1  # trials asked per batch (run them in parallel with +sweep=parallel)
    objectives: list[str] = field(default_factory=lambda: ["val_accuracy"])  # val_accuracy, val_loss, train_seconds, epochs_trained
    direction: Any = "maximize"  # maximize | minimize, or a list: one per objective
    sampler: str = "tpe"  # tpe | random | nsgaii
    seed: Optional[int] = None  # the sampler's seed (null: a random one)
    pruner: Optional[str] = None  # null | median | hyperband | successive_halving
    min_epochs: int = 1  # the pruner's least epochs before it may stop a member
    reduction_factor: int = 3  # hyperband, successive_halving: 1/factor of the members go on at each rung
    storage: Optional[str] = None  # null: sqlite optuna.db at the project root; a database URL; or a journal file (.log)
    study_name: Optional[str] = None  # null: <experiment>-<sweep dir>, one study per sweep
    params: dict[str, str] = field(default_factory=dict)  # the search space: key -> choice(...), interval(...), ...


# Which schema each config group's options follow.
GROUP_SCHEMAS: dict[str, tuple[type, ...]] = {
    "data": (DataConfig,),
    "model": (ModelConfig,),
    "optimizer": (SGDConfig, AdamConfig),
    "schedule": (ScheduleConfig,),
    "trainer": (TrainerConfig,),
    "mlflow": (MlflowConfig,),
    "augment": (NoAugmentConfig, ShiftConfig, AffineConfig, ElasticConfig),
}
PRESET_GROUPS = ("experiment", "debug", "sweep")


def option_schema(group: str, name: str) -> type:
    """The schema the option ``name`` of ``group`` follows: the group's only one, or (optimizer,
    augment) the one of that name -- SGD or the Adam family for an optimizer."""
    if group == "optimizer":
        return AdamConfig if str(name).startswith("adam") else SGDConfig
    schemas = GROUP_SCHEMAS[group]
    return next((s for s in schemas if getattr(s, "name", None) == name), schemas[0])


def schema_keys() -> set[str]:
    """Every key the schemas define, dotted (``seed``, ``optimizer.lr``); the groups themselves excluded."""
    keys = {f.name for f in dataclasses.fields(Config) if f.name not in GROUP_SCHEMAS}
    for group, schemas in GROUP_SCHEMAS.items():
        keys |= {f"{group}.{f.name}" for s in schemas for f in dataclasses.fields(s)}
    return keys


def group_options(group: str) -> list[str]:
    """The options of a config group: YAML files under ``conf/<group>/``."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def register_configs() -> None:
    """Put the schemas (group ``schema/``) and the sweep callback in Hydra's ConfigStore.

    Also exports the project root as ``$MNIST_NP_ROOT``, which the run and
    sweep dirs in ``conf/config.yaml`` are built from: an environment
    variable (read with the built-in ``oc.env`` resolver) reaches joblib,
    submitit and Slurm workers, where a custom resolver would be unknown.
    """
    from hydra.core.config_store import ConfigStore

    os.environ.setdefault(ROOT_ENV, str(PROJECT_ROOT))
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    # Schemas live in their own group, so they do not show up as options of
    # the groups they type (`optimizer=base_sgd` is not a choice anyone should see).
    for group, name, node in [
        ("data", "data", DataConfig),
        ("model", "mlp", ModelConfig),
        ("optimizer", "sgd", SGDConfig),
        ("optimizer", "adam", AdamConfig),
        ("schedule", "schedule", ScheduleConfig),
        ("trainer", "trainer", TrainerConfig),
        ("mlflow", "mlflow", MlflowConfig),
        *(("augment", schema.name, schema) for schema in GROUP_SCHEMAS["augment"]),  # type: ignore[attr-defined]
    ]:
        cs.store(group=f"schema/{group}", name=name, node=node, package=group)
    cs.store(group="hydra/sweeper", name="mnist_np_optuna", node=SearchSweeperConfig, provider="mnist_np")
    # Hydra instantiates callbacks from _target_ strings; keeping that string
    # here, in code, leaves conf/ free of import paths.
    cs.store(
        group="hydra/callbacks",
        name="mlflow_sweep",
        node={"mlflow_sweep": {"_target_": "mnist_np.experiment.sweep.MlflowSweepCallback"}},
        package="hydra.callbacks",
    )
