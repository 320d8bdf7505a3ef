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

import copy
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


def described(default: Any, text: str) -> Any:
    """A field with its one-line description, the docs' configuration reference (docs/hooks/generated.py).

    Each key is described once, here, beside its type and default; a key two
    schemas share (``optimizer.lr``) is described in the first of them.
    """
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass
class DataConfig:
    name: str = described(MISSING, "`mnist`, `fashion_mnist` (set by the group option)")
    dir: Optional[str] = described(None, "an existing folder with the four IDX files (raw or `.gz`), tried first")
    cache_dir: Optional[str] = described(None, "a folder (made if missing); `null`: `$MNIST_NP_DATA_DIR`, "
                                               "else `~/.cache/mnist-np`")
    val_size: int = described(5_000, "0 … 59,999 images taken from the training set for validation")
    split_seed: int = described(0, "the validation split's own seed (one split for all runs of a sweep)")
    train_limit: Optional[int] = described(None, "train on the first N training images (smoke runs)")


@dataclass
class ModelConfig:
    name: str = described("mlp", "`mlp` (set by the group option)")
    hidden_size: int = described(128, "units per hidden layer, ≥ 1")
    num_hidden_layers: int = described(1, "≥ 0 (0 is softmax regression)")
    activation: str = described("relu", "`relu`, `leaky_relu`, `tanh`, `sigmoid`")
    negative_slope: float = described(DEFAULT_NEGATIVE_SLOPE, "`leaky_relu` slope, ≥ 0")
    init: str = described("he", "`he` (N(0, 2/fan_in)), `xavier` (Glorot uniform), `normal` (N(0, init_scale²))")
    init_scale: float = described(0.01, "standard deviation for `init=normal`, > 0")
    dropout: float = described(0.0, "inverted-dropout rate on hidden layers, in [0, 1)")


@dataclass
class SGDConfig:
    name: str = described("sgd", "`sgd`, `adam`, `adamw` (set by the group option)")
    lr: float = described(0.1, "> 0")
    momentum: float = described(0.9, "sgd: in [0, 1)")
    nesterov: bool = described(True, "sgd: Nesterov momentum (needs momentum > 0)")
    weight_decay: float = described(
        0.0005, "≥ 0; on weight matrices only. sgd/adam: L2 added to the gradient; adamw: decoupled")


@dataclass
class AdamConfig:
    name: str = MISSING  # adam | adamw; described (like lr and weight_decay) in SGDConfig
    lr: float = 0.001
    betas: list[float] = described([0.9, 0.999], "adam/adamw: two numbers in [0, 1)")
    eps: float = described(1e-8, "adam/adamw: > 0")
    weight_decay: float = MISSING  # L2 for adam, decoupled for adamw: each option sets its own


@dataclass
class ScheduleConfig:
    name: str = described(MISSING, "`constant`, `step`, `cosine` (set by the group option)")
    warmup_epochs: float = described(0.0,
                                     "linear warm-up over this many epochs (fractions allowed), ≤ `trainer.epochs`")
    step_size: int = described(10, "step: epochs between decays, ≥ 1")
    gamma: float = described(0.1, "step: decay factor, in [0, 1]")
    min_lr: float = described(0.0, "cosine: final learning rate, below `optimizer.lr`")


@dataclass
class TrainerConfig:
    epochs: int = described(20, "≥ 1")
    batch_size: int = described(128, "≥ 1 and at most the training split")
    eval_batch_size: int = described(10_000, "evaluation chunk size")
    dtype: str = described("float32", "`float32`, `float64`")
    monitor: str = described("val_loss", "`val_loss`, `val_accuracy`: picks the best epoch and drives early stopping")
    early_stopping_patience: Optional[int] = described(None, "stop after this many epochs without improvement")
    test_weights: str = described("last", "`last` (scores `final.npz`), `best` (scores `best.npz`)")
    progress: Optional[bool] = described(None, "`null`: a progress bar on a terminal, one line per epoch otherwise")
    threads: Optional[int] = described(
        None, "cores for the run; `null`: the cores this process may use (affinity mask, cgroup CPU quota, "
        "`SLURM_CPUS_PER_TASK`; tag `cores`), or `cores // n_jobs` in a parallel sweep, `cpus_per_task` under "
        "submitit. With 2 or more, a batch of 32 rows or more is split into that many shard processes "
        "(see [Performance](performance.md))")
    checkpoint_every: int = described(1, "save the full training state every N epochs (and after the last)")
    keep_checkpoints: int = described(2, "how many checkpoints stay on disk")


@dataclass
class NoAugmentConfig:
    name: str = described("none",
                          "`none` (the training images as they are; nothing runs), `shift`, `affine`, `elastic` "
                          "(set by the group option); validation and test images are never augmented")


@dataclass
class ShiftConfig:
    name: str = "shift"  # described in NoAugmentConfig
    max_shift: int = described(2, "shift: whole pixels each way, per axis, 0 … 10")


@dataclass
class AffineConfig:
    name: str = "affine"  # described in NoAugmentConfig
    rotation: float = described(10.0, "affine: degrees each way, 0 … 180")
    scale: float = described(0.1, "affine: zoom in [1 - scale, 1 + scale], 0 ≤ scale < 1")
    shear: float = described(5.0, "affine: degrees each way, 0 … 45")
    translate: float = described(2.0, "affine: pixels each way, per axis, 0 … 10")


@dataclass
class ElasticConfig:
    name: str = "elastic"  # described in NoAugmentConfig
    alpha: float = described(34.0, "elastic: displacement scale, 0 … 100 (Simard et al. 2003: 34)")
    sigma: float = described(4.0,
                             "elastic: pixels of the Gaussian smoothing the random field, 1 … 10 (Simard et al.: 4)")


@dataclass
class MlflowConfig:
    tracking_uri: Optional[str] = described(
        "${oc.env:MLFLOW_TRACKING_URI,null}", "`null`: `sqlite:///<project root>/mlflow.db`, artifacts in "
        "`<project root>/mlartifacts/`; or `http(s)://host:port` for a server, `sqlite:///<absolute path>`, a database "
        "URI (`postgresql://`, `mysql://`, `mssql://`)")
    experiment_name: str = described("mnist-np", "the MLflow experiment")
    run_name: Optional[str] = described(None, "up to 250 characters; `null`: built from the config, e.g. "
                                              "`mlp128-sgd-lr0.1-bs128`")
    sweep_name: Optional[str] = described(None, "name of a sweep's parent run; `null`: from the swept overrides")
    log_plots: bool = described(True, "make and log the plots")
    log_checkpoints: bool = described(False, "also upload each checkpoint to the run")
    log_system_metrics: bool = described(
        True, "CPU, memory, disk and network use every 5 s while the run trains (MLflow's own monitor, "
              "psutil): metrics `system/*`")
    register_as: Optional[str] = described(
        None,
        "a registered model name: a run's model becomes a new version of it; a sweep registers only its best member "
        "and points the alias `champion` at it (see [the Model Registry](predicting.md#the-model-registry))")


@dataclass
class Config:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    optimizer: Any = MISSING  # SGDConfig or AdamConfig, chosen by the optimizer group
    schedule: ScheduleConfig = MISSING
    trainer: TrainerConfig = MISSING
    mlflow: MlflowConfig = MISSING
    augment: Any = MISSING  # one of the augment schemas, chosen by the augment group
    seed: int = described(0, "integer ≥ 0; seeds every random stream (init, shuffling, dropout, augmentation)")
    tags: list[str] = described(
        [], "labels for the run (and a sweep's parent), e.g. `tags=[baseline,lr-study]`: MLflow tags `<label>=true`; "
        "lowercase letters, digits, `_`, `-`, at most 40 characters, not one of the project's own tag names")
    notes: Optional[str] = described(
        None,
        "the run's description in the MLflow UI (tag `mlflow.note.content`), e.g. `notes=\"first try with dropout\"`")
    resume: Optional[str] = described(None, "a run id or output dir: continue that interrupted run with its own config")
    dry_run: bool = described(
        False, "`true`: print what the command would launch (each member's overrides and run name; a search's space "
        "and `n_trials`), check every member's config, create nothing; exit 2 if one is invalid "
        "(see [Dry run](sweeps.md#dry-run))")


SEARCH_SWEEPER = "hydra_plugins.mnist_np_optuna.optuna_sweeper.OptunaSweeper"
GRID_SWEEPER = "hydra_plugins.mnist_np_grid.grid_sweeper.GridSweeper"


@dataclass
class GridSweeperConfig:
    """``hydra.sweeper`` of a grid sweep (the default): Hydra's ``basic`` sweeper's keys, the project's class."""

    _target_: str = GRID_SWEEPER
    max_batch_size: Optional[int] = None
    params: Optional[dict[str, str]] = None


@dataclass
class SearchSweeperConfig:
    """``hydra.sweeper`` of a guided search (``+sweep=optuna``): Hydra's plugin config, so it names its class."""

    _target_: str = SEARCH_SWEEPER
    n_trials: int = described(20, "trials in the study, counting COMPLETE, PRUNED and FAIL ones")
    n_jobs: int = described(1,
                            "workers, each running its next trial as its last one ends, side by side with a parallel "
                            "launcher (`+sweep=[optuna,parallel]`); trials per batch when not `asynchronous`")
    asynchronous: bool = described(True, "each worker asks for its next trial at once; `false`: batches of `n_jobs` "
                                         "trials, each batch waiting for its slowest")
    objectives: list[str] = described(
        ["val_accuracy"], "what a trial scores: `val_accuracy`, `val_loss` (the best epoch's), `train_seconds`, "
        "`epochs_trained`; never a test figure")
    direction: Any = described("maximize", "one per objective: `maximize` or `minimize`")
    sampler: str = described("tpe", "`tpe`, `random`, `nsgaii`")
    seed: Optional[int] = described(None, "the sampler's seed (`null`: a random one)")
    pruner: Optional[str] = described(
        None, "`median`, `hyperband`, `successive_halving` (one objective, `val_accuracy` or `val_loss`)")
    min_epochs: int = described(1, "epochs before the pruner may stop a member")
    reduction_factor: int = described(3, "hyperband, successive_halving: one in this many members goes on at each rung")
    storage: Optional[str] = described(
        None,
        "`null`: `sqlite:///<project>/optuna.db`, beside `mlflow.db`; any Optuna database URL (`postgresql://...`); "
        "or a journal file (a path ending in `.log`) on a filesystem a cluster's nodes share")
    study_name: Optional[str] = described(
        None, "`null`: `<experiment>-<date>-<time>` of the sweep dir, one study per sweep; a name of your own "
              "continues that study")
    params: dict[str, str] = described(
        {},
        "the search space: `choice(a, b)` or `a,b`; `range(lo, hi[, step])`; `interval(lo, hi)`; each may be wrapped "
        "in `tag(log, ...)` (log scale) or `tag(int, ...)`; a swept key on the command line joins (and wins over) them")


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


def is_group(name: str) -> bool:
    """Whether ``name`` (a leading ``+`` or ``~`` aside) is a config group, whose value picks an option: one of
    :data:`GROUP_SCHEMAS` or a preset group."""
    name = name.lstrip("+~")
    return name in GROUP_SCHEMAS or name in PRESET_GROUPS


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
    cs.store(group="hydra/sweeper", name="mnist_np_grid", node=GridSweeperConfig, provider="mnist_np")
    _store_submitit_launchers(cs)
    # Hydra instantiates callbacks from _target_ strings; keeping that string
    # here, in code, leaves conf/ free of import paths.
    cs.store(
        group="hydra/callbacks",
        name="mlflow_sweep",
        node={"mlflow_sweep": {"_target_": "mnist_np.experiment.sweep.session.MlflowSweepCallback"}},
        package="hydra.callbacks",
    )


def _store_submitit_launchers(cs: Any) -> None:
    """``hydra/launcher=mnist_np_submitit_slurm`` and ``..._local``: Hydra's submitit keys, the launchers that wait
    for every job (:mod:`mnist_np.experiment.sweep.submitit`). Nothing where the ``sweeps`` extra is missing."""
    try:
        from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
    except ImportError:
        return

    @dataclass
    class WaitingSlurmConf(SlurmQueueConf):
        _target_: str = "hydra_plugins.mnist_np_submitit.submitit_launcher.SlurmLauncher"
        # null: one cluster job per member; K: K cluster jobs, each taking members (or trials) until none is left.
        workers: Optional[int] = None

    @dataclass
    class WaitingLocalConf(LocalQueueConf):
        _target_: str = "hydra_plugins.mnist_np_submitit.submitit_launcher.LocalLauncher"
        workers: Optional[int] = None

    cs.store(group="hydra/launcher", name="mnist_np_submitit_slurm", node=WaitingSlurmConf, provider="mnist_np")
    cs.store(group="hydra/launcher", name="mnist_np_submitit_local", node=WaitingLocalConf, provider="mnist_np")
