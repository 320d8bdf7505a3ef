"""Config schemas, registration with Hydra's ConfigStore, and validation.

Three layers of checking, all before anything is created on disk or in MLflow:

1. :func:`check_overrides` reads the command line with Hydra's own override
   parser and rejects unknown groups/options, unknown keys and values of the
   wrong type with one line each (Hydra's own messages run to several lines).
2. The dataclass schemas below are registered in the ConfigStore, so Hydra
   type-checks every composed config (including presets) against them.
3. :func:`validate` checks values and their combinations (``lr > 0``, a known
   activation, ``val_size`` smaller than the training set, ...).

Components are named, never imported: ``optimizer.name: adam`` is looked up
in :mod:`mnist_np.registry`. This module is an adapter: the numeric core does
not import it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from mnist_np import registry
from mnist_np.training import MONITORS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
TRAIN_IMAGES = 60_000  # both datasets ship 60k training images before the val split


MAX_NAME = 250  # MLflow's limit for run names
# Stores a run may name. A bare path would make MLflow write a file store
# wherever the process happens to run; the project's store is one absolute place.
TRACKING_SCHEMES = ("sqlite:///", "http://", "https://", "postgresql://", "postgresql+", "mysql://", "mysql+", "mssql://", "mssql+")


class ConfigError(ValueError):
    """An invalid config value; ``str()`` is the one line shown to the user."""


@dataclass
class DataConfig:
    name: str = "mnist"
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
    negative_slope: float = 0.01  # leaky_relu only
    init: str = "he"
    init_scale: float = 0.01  # init=normal only: standard deviation
    dropout: float = 0.0


@dataclass
class SGDConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0


@dataclass
class AdamConfig:
    name: str = "adam"
    lr: float = 0.001
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class ScheduleConfig:
    name: str = "constant"
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
class MlflowConfig:
    tracking_uri: Optional[str] = None  # null: sqlite mlflow.db at the project root
    experiment_name: str = "mnist-np"
    run_name: Optional[str] = None  # null: built from the config, e.g. mlp128-sgd-lr0.1-bs128
    sweep_name: Optional[str] = None  # the parent run of a --multirun sweep; null: from the swept overrides
    log_plots: bool = True
    log_checkpoints: bool = False  # also upload every training-state checkpoint to the run


@dataclass
class Config:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    optimizer: Any = MISSING  # SGDConfig or AdamConfig, chosen by the optimizer group
    schedule: ScheduleConfig = MISSING
    trainer: TrainerConfig = MISSING
    mlflow: MlflowConfig = MISSING
    seed: int = 0
    resume: Optional[str] = None  # a run id or output dir: continue that interrupted run instead


# Which schema each config group's options follow.
GROUP_SCHEMAS: dict[str, tuple[type, ...]] = {
    "data": (DataConfig,),
    "model": (ModelConfig,),
    "optimizer": (SGDConfig, AdamConfig),
    "schedule": (ScheduleConfig,),
    "trainer": (TrainerConfig,),
    "mlflow": (MlflowConfig,),
}
PRESET_GROUPS = ("experiment", "debug", "sweep")


def schema_keys() -> set[str]:
    """Every key the schemas define, dotted (``seed``, ``optimizer.lr``); the groups themselves excluded."""
    keys = {f.name for f in dataclasses.fields(Config) if f.name not in GROUP_SCHEMAS}
    for group, schemas in GROUP_SCHEMAS.items():
        keys |= {f"{group}.{f.name}" for s in schemas for f in dataclasses.fields(s)}
    return keys
ROOT_ENV = "MNIST_NP_ROOT"  # conf/config.yaml reads the project root from here


def register_configs() -> None:
    """Put the schemas (group ``schema/``) and the sweep callback in Hydra's ConfigStore.

    Also exports the project root as ``$MNIST_NP_ROOT``, which the run and
    sweep dirs in ``conf/config.yaml`` are built from: an environment
    variable (read with the built-in ``oc.env`` resolver) reaches joblib,
    submitit and Slurm workers, where a custom resolver would be unknown.
    """
    import os

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
    ]:
        cs.store(group=f"schema/{group}", name=name, node=node, package=group)
    # Hydra instantiates callbacks from _target_ strings; keeping that string
    # here, in code, leaves conf/ free of import paths.
    cs.store(
        group="hydra/callbacks",
        name="mlflow_sweep",
        node={"mlflow_sweep": {"_target_": "mnist_np.sweep.MlflowSweepCallback"}},
        package="hydra.callbacks",
    )


# ---------------------------------------------------------------------------
# Command-line overrides


def group_options(group: str) -> list[str]:
    """The options of a config group: YAML files under ``conf/<group>/``."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_overrides(args: list[str], composition: bool = True) -> None:
    """Reject bad command-line overrides with one line, before Hydra composes.

    Covers: unknown group options (``optimizer=nope``), unknown keys
    (``trainer.epoch=3``) and values that do not fit the key's type
    (``trainer.epochs=abc``), including every value of a choice/range sweep;
    then, with ``composition``, composes the config to catch what only the
    whole config shows (see :func:`_composition_error`). ``hydra.*``
    overrides and flags are left to Hydra.
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    # Hydra's own argument parser separates flags (--config-dir X, -m) from overrides.
    known, _ = get_args_parser().parse_known_args(args)
    if known.shell_completion:
        return  # `-sc install=bash`: its words are Hydra's commands, not config overrides
    if known.config_name not in (None, "config") or known.config_dir or known.config_path:
        return  # another primary config (e.g. a run's saved .hydra/config.yaml): Hydra checks it
    overrides = list(known.overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"cannot parse the command line: {str(e).splitlines()[0]}") from None
    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra") or o.is_delete():
            continue
        if o.is_sweep_override():
            try:
                values = list(o.sweep_iterator())
            except HydraException:
                continue  # interval()/tag() search spaces: the sweeper's business
        else:
            values = [o.value()]
        group = key.split(".", 1)[0].lstrip("+")
        if "." not in key and (group in GROUP_SCHEMAS or group in PRESET_GROUPS):
            options = group_options(group)
            for v in values:
                if str(v) not in options:
                    raise ConfigError(f"{group}={v!r} is not a known option; allowed: {', '.join(options)}")
            continue
        for v in values:
            _check_value(key, v)
    # Without overrides of ours the config is the default one, which the tests compose:
    # nothing to learn from composing it again (a third of a second at every start).
    ours = [o for o in parsed if not o.key_or_group.startswith("hydra")]
    error = _composition_error(parsed) if composition and ours else None
    if error is not None:
        raise ConfigError(error)


MAX_COMPOSITIONS = 16  # a sweep's command lines composed up front (each takes ~0.1 s)


def _composition_error(parsed: list[Any]) -> str | None:
    """Compose the config as Hydra will, and say in one line what stops it.

    Catches what only the composed config shows: a key that the chosen
    option's schema lacks (``optimizer.betas`` with ``optimizer=sgd``). A
    sweep is composed at its first values, then with each other option of a
    swept group once. Other values of a swept key change no key of the
    config (check_overrides has type-checked each one), so they are not
    composed: that is a third of a second per value at every sweep's start.
    ``hydra.*`` overrides are Hydra's own business and left out.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    fixed, swept = [], []
    for o in parsed:
        key = o.get_key_element()
        if o.key_or_group.startswith("hydra"):
            continue
        if not o.is_sweep_override():
            fixed.append(o.input_line)
            continue
        try:
            values = [f"{key}={v}" for v in o.sweep_string_iterator()]
        except HydraException:
            continue  # interval()/tag() search spaces: the sweeper draws them
        group = o.key_or_group.lstrip("+~")
        swept.append(values if group in GROUP_SCHEMAS or group in PRESET_GROUPS else values[:1])
    first = [values[0] for values in swept]
    variants = [fixed + first]
    for i, values in enumerate(swept):
        variants += [fixed + first[:i] + [v] + first[i + 1 :] for v in values[1:]]
    for lines in variants[:MAX_COMPOSITIONS]:
        try:
            _compose(lines)
        except (HydraException, OmegaConfBaseException) as e:
            cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
            key = str(getattr(cause, "full_key", "") or "")
            group = key.split(".", 1)[0]
            if isinstance(cause, MissingMandatoryValue):
                return _missing(key)
            if "." in key and group in GROUP_SCHEMAS:
                rest = [line for line in lines if line.split("=", 1)[0].lstrip("+~") != key]
                try:
                    chosen = _compose(rest)[group]
                    return f"{key} is not a key of {group}={chosen.get('name', '?')}; its keys: {', '.join(sorted(chosen))}"
                except (HydraException, OmegaConfBaseException):
                    pass
            first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            return f"cannot compose the config: {first_line}"
    return None


def _check_value(key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) == 1:
        schemas: tuple[type, ...] = (Config,)
        name = parts[0]
    elif len(parts) == 2 and parts[0] in GROUP_SCHEMAS:
        schemas = GROUP_SCHEMAS[parts[0]]
        name = parts[1]
    else:
        return  # deeper keys are not ours to judge
    candidates = [s for s in schemas if name in {f.name for f in dataclasses.fields(s)}]
    if not candidates or (len(parts) == 1 and name in GROUP_SCHEMAS):
        known = sorted({f.name for s in schemas for f in dataclasses.fields(s)} - set(GROUP_SCHEMAS))
        where = f"keys of {parts[0]}" if len(parts) == 2 else "top-level keys"
        raise ConfigError(f"{key} is not a config key; {where}: {', '.join(known)}")
    hint = typing.get_type_hints(candidates[0])[name]
    if value == MISSING:
        raise ConfigError(f"{key}=??? leaves a required value unset; expected {_describe_type(hint)}")
    # OmegaConf would take 3 or "yes" for a boolean; a typo should not silently mean true.
    strict_bool = hint is bool or (typing.get_origin(hint) is typing.Union and bool in typing.get_args(hint))
    if strict_bool and not isinstance(value, bool) and value is not None:
        raise ConfigError(f"{key}={value!r} has the wrong type; expected {_describe_type(hint)}")
    for schema in candidates:
        node = OmegaConf.structured(schema)
        try:
            setattr(node, name, value)
            return
        except Exception:  # omegaconf.ValidationError and friends
            pass
    raise ConfigError(f"{key}={value!r} has the wrong type; expected {_describe_type(hint)}")


def _describe_type(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        inner = [a for a in args if a is not type(None)][0]
        return f"{_describe_type(inner)} or null"
    if origin is list:
        return f"a list of {_describe_type(args[0])}s" if args else "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


# ---------------------------------------------------------------------------
# Value checks on the composed config


def estimated_bytes(cfg: DictConfig) -> int:
    """A generous estimate of a run's peak memory: data, parameters and the copies training keeps.

    Parameters are held ~6 times (weights, gradients, optimizer state up to
    two arrays, scratch, best-epoch copy); activations for one training batch
    and one evaluation chunk; the dataset as floats plus its raw bytes.
    """
    m, t = cfg.model, cfg.trainer
    item = 8 if t.dtype == "float64" else 4
    sizes = [784] + [int(m.hidden_size)] * int(m.num_hidden_layers) + [10]
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    widest = max(sizes)
    activations = (int(t.batch_size) * 4 + int(t.eval_batch_size) * 2) * widest * (len(sizes) - 1)
    data = 70_000 * 784 * (item + 1)
    return (params * 6 + activations) * item + data


def available_bytes() -> int | None:
    """Memory the system can give us now (``MemAvailable``), if it says."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _memory_check(cfg: DictConfig) -> str | None:
    """Refuse, before any allocation, a network that cannot fit in memory."""
    needed, free = estimated_bytes(cfg), available_bytes()
    if free is None or needed <= free:
        return None
    gib = 1024**3
    return (
        f"model.hidden_size={cfg.model.hidden_size} (x{cfg.model.num_hidden_layers} layers, batch "
        f"{cfg.trainer.batch_size}, {cfg.trainer.dtype}) needs about {needed / gib:.1f} GiB but "
        f"{free / gib:.1f} GiB is available; expected a smaller network or batch"
    )


def validate(cfg: DictConfig) -> None:
    """Check values and combinations; raise :class:`ConfigError` naming the first bad key.

    Runs on the composed config before any data, output or MLflow run is made.
    """
    from omegaconf.errors import MissingMandatoryValue

    try:
        for check in _checks(cfg):
            if check is not None:
                raise ConfigError(check)
    except MissingMandatoryValue as e:
        raise ConfigError(_missing(str(e.full_key))) from None


def _missing(key: str) -> str:
    """One line for a value left at ``???`` (or a group removed with ``~group``)."""
    if key in GROUP_SCHEMAS:
        return f"{key} is missing; expected one of {', '.join(group_options(key))} ({key}=<option>)"
    group, _, name = key.partition(".")
    hints = [typing.get_type_hints(schema)[name] for schema in GROUP_SCHEMAS.get(group, (Config,))
             if name in {f.name for f in dataclasses.fields(schema)}]
    return f"{key}=??? leaves a required value unset; expected {_describe_type(hints[0]) if hints else 'a value'}"


def _bad(key: str, value: Any, allowed: str) -> str:
    return f"{key}={_fmt(value)} is not allowed; expected {allowed}"


def _fmt(value: Any) -> str:
    if isinstance(value, (ListConfig, DictConfig)):
        value = OmegaConf.to_container(value)
    return repr(value) if isinstance(value, str) else str(value)


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _checks(cfg: DictConfig) -> typing.Iterator[str | None]:
    from mnist_np.data import DATASETS

    def choice(key: str, value: Any, allowed: typing.Iterable[str]) -> str | None:
        allowed = sorted(allowed)
        return None if value in allowed else _bad(key, value, "one of " + ", ".join(allowed))

    def at_least(key: str, value: Any, low: float, strict: bool = False) -> str | None:
        ok = _num(value) and (value > low if strict else value >= low)
        return None if ok else _bad(key, value, f"a number {'>' if strict else '>='} {low:g}")

    def within(key: str, value: Any, low: float, high: float, high_open: bool = True) -> str | None:
        ok = _num(value) and low <= value and (value < high if high_open else value <= high)
        return None if ok else _bad(key, value, f"a number in [{low:g}, {high:g}{')' if high_open else ']'}")

    d, m, o, s, t = cfg.data, cfg.model, cfg.optimizer, cfg.schedule, cfg.trainer
    yield at_least("seed", cfg.seed, 0)
    yield choice("data.name", d.name, DATASETS)
    yield at_least("data.split_seed", d.split_seed, 0)
    if not (isinstance(d.val_size, int) and 0 <= d.val_size < TRAIN_IMAGES):
        yield _bad("data.val_size", d.val_size, f"an integer in [0, {TRAIN_IMAGES - 1}] (the training set has {TRAIN_IMAGES} images)")
    train_size = TRAIN_IMAGES - d.val_size
    if d.train_limit is not None:
        if not (isinstance(d.train_limit, int) and d.train_limit >= 1):
            yield _bad("data.train_limit", d.train_limit, "null or an integer >= 1")
        train_size = min(train_size, d.train_limit)

    yield choice("model.name", m.name, ["mlp"])
    yield at_least("model.hidden_size", m.hidden_size, 1)
    yield at_least("model.num_hidden_layers", m.num_hidden_layers, 0)
    yield choice("model.activation", m.activation, registry.ACTIVATIONS)
    yield at_least("model.negative_slope", m.negative_slope, 0)
    yield choice("model.init", m.init, registry.INITIALIZERS)
    yield at_least("model.init_scale", m.init_scale, 0, strict=True)
    yield within("model.dropout", m.dropout, 0, 1)

    yield choice("optimizer.name", o.name, registry.OPTIMIZERS)
    yield at_least("optimizer.lr", o.lr, 0, strict=True)
    yield at_least("optimizer.weight_decay", o.weight_decay, 0)
    if o.name == "sgd":
        yield within("optimizer.momentum", o.momentum, 0, 1)
        if o.nesterov and not o.momentum > 0:
            yield _bad("optimizer.nesterov", o.nesterov, "false unless optimizer.momentum > 0")
    elif "betas" in o:
        if len(o.betas) != 2 or not all(_num(b) and 0 <= b < 1 for b in o.betas):
            yield _bad("optimizer.betas", o.betas, "two numbers in [0, 1), e.g. [0.9,0.999]")
        yield at_least("optimizer.eps", o.eps, 0, strict=True)

    yield choice("schedule.name", s.name, registry.SCHEDULES)
    yield at_least("trainer.epochs", t.epochs, 1)
    if _num(t.epochs):
        yield within("schedule.warmup_epochs", s.warmup_epochs, 0, t.epochs, high_open=False)
    yield at_least("schedule.step_size", s.step_size, 1)
    yield within("schedule.gamma", s.gamma, 0, 1, high_open=False)
    if s.name == "cosine" and _num(o.lr):
        yield within("schedule.min_lr", s.min_lr, 0, o.lr)

    yield at_least("trainer.batch_size", t.batch_size, 1)
    if _num(t.batch_size) and t.batch_size > train_size:
        yield _bad("trainer.batch_size", t.batch_size, f"at most the training split's {train_size} images")
    yield at_least("trainer.eval_batch_size", t.eval_batch_size, 1)
    yield choice("trainer.dtype", t.dtype, registry.DTYPES)
    yield choice("trainer.monitor", t.monitor, MONITORS)
    yield choice("trainer.test_weights", t.test_weights, ["best", "last"])
    if t.early_stopping_patience is not None:
        yield at_least("trainer.early_stopping_patience", t.early_stopping_patience, 1)
        if d.val_size == 0:
            yield _bad("trainer.early_stopping_patience", t.early_stopping_patience, "null when data.val_size=0 (nothing to monitor)")

    if t.threads is not None:
        yield at_least("trainer.threads", t.threads, 1)
    yield at_least("trainer.checkpoint_every", t.checkpoint_every, 1)
    yield at_least("trainer.keep_checkpoints", t.keep_checkpoints, 1)
    yield _memory_check(cfg)

    if d.dir is not None and not Path(d.dir).expanduser().is_dir():
        yield _bad("data.dir", d.dir, "null or an existing folder holding the four IDX files")
    if d.cache_dir is not None and Path(d.cache_dir).expanduser().exists() and not Path(d.cache_dir).expanduser().is_dir():
        yield _bad("data.cache_dir", d.cache_dir, "null or a folder (it is created when missing)")
    ml = cfg.mlflow
    if ml.tracking_uri is not None and not str(ml.tracking_uri).startswith(TRACKING_SCHEMES):
        yield _bad("mlflow.tracking_uri", ml.tracking_uri, "null (the project's mlflow.db), sqlite:///<absolute path>, "
                   "http(s)://host:port, or a database URI (postgresql://, mysql://, mssql://)")
    if not str(ml.experiment_name).strip():
        yield _bad("mlflow.experiment_name", ml.experiment_name, "a non-empty name")
    for key in ("run_name", "sweep_name"):
        name = ml[key]
        if name is not None and not (str(name).strip() and len(str(name)) <= MAX_NAME):
            yield _bad(f"mlflow.{key}", name, f"null or a non-empty name of at most {MAX_NAME} characters")


def compose(overrides: typing.Sequence[str] = ()) -> DictConfig:
    """The config ``scripts/train.py`` would run with these overrides (no Hydra run dir, no logging set-up).

    For tests, notebooks and tools that re-create a run's config.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    check_overrides(list(overrides), composition=False)  # composing is the next step anyway
    try:
        return _compose(overrides)
    except (HydraException, OmegaConfBaseException):
        error = _composition_error(OverridesParser.create().parse_overrides(list(overrides)))
        raise ConfigError(error or "cannot compose the config") from None


def _compose(overrides: typing.Sequence[str]) -> DictConfig:
    """Hydra's composition of ``conf/config.yaml`` with ``overrides`` (no checks of ours)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def load_run_config(text: str, source: str = "config") -> DictConfig:
    """A config read back from a run (untrusted data): checked against the schema, then validated.

    Unknown keys and wrong types are refused (the schema is strict), and
    nothing in it is ever imported or executed: components are names looked
    up in the registries.
    """
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    try:
        raw = OmegaConf.create(text)
        if not isinstance(raw, DictConfig):
            raise ConfigError(f"{source}: not a mapping")
        optimizer_schema = AdamConfig if str(raw.get("optimizer", {}).get("name", "sgd")).startswith("adam") else SGDConfig
        schema = OmegaConf.structured(
            Config(
                data=DataConfig(), model=ModelConfig(), optimizer=optimizer_schema(), schedule=ScheduleConfig(),
                trainer=TrainerConfig(), mlflow=MlflowConfig(),
            )
        )
        cfg = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{source}: {key + ': ' if key else ''}{str(e).splitlines()[0]}") from None
    except yaml.YAMLError as e:  # e.g. a !!python/object tag: OmegaConf's loader is a safe one and refuses it
        raise ConfigError(f"{source}: not plain YAML data ({str(e).splitlines()[0]})") from None
    assert isinstance(cfg, DictConfig)
    validate(cfg)
    return cfg
