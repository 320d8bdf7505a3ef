"""Value checks on a composed config, before anything is created on disk or in MLflow.

Types are the schemas' business (Hydra enforces them while composing); here
the values and their combinations: ``lr > 0``, a known activation,
``val_size`` smaller than the training set, a network that fits in memory.
The first bad key ends it with one line that names the key and what would
be accepted.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf

from mnist_np.data import DATASETS
from mnist_np.data.augment import AUGMENTATIONS
from mnist_np.experiment.config.overrides import missing_value
from mnist_np.experiment.config.schema import TRAIN_IMAGES, ConfigError
from mnist_np.nn import registry
from mnist_np.tracking.conventions import MAX_NAME_CHARS, MAX_TAG_CHARS, OWN_TAGS
from mnist_np.train.loop import MONITORS

# Stores a run may name. A bare path would make MLflow write a file store
# wherever the process happens to run; the project's store is one absolute place.
LABEL = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")  # a run's label: short, one word, safe in a search filter
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
TRACKING_SCHEMES = ("sqlite:///", "http://", "https://", "postgresql://", "postgresql+", "mysql://", "mysql+",
                    "mssql://", "mssql+")

Check = Iterator[str | None]  # each item: None, or the one line saying what is wrong


def validate(cfg: DictConfig) -> None:
    """Check values and combinations; raise :class:`ConfigError` naming the first bad key."""
    from omegaconf.errors import MissingMandatoryValue

    if cfg.get("dry_run"):  # set by a config file, not the command line: too late to create nothing
        raise ConfigError("dry_run=true is not allowed in a config file or preset; expected on the command line, where "
                          "scripts/train.py answers it before anything is created")
    try:
        for checks in (_data, _model, _optimizer, _schedule, _trainer, _augment, _resources, _data_folders, _mlflow):
            for problem in checks(cfg):
                if problem is not None:
                    raise ConfigError(problem)
    except MissingMandatoryValue as e:
        raise ConfigError(missing_value(str(e.full_key))) from None


def _bad(key: str, value: Any, allowed: str) -> str:
    return f"{key}={_fmt(value)} is not allowed; expected {allowed}"


def _fmt(value: Any) -> str:
    if isinstance(value, (ListConfig, DictConfig)):
        value = OmegaConf.to_container(value)
    return repr(value) if isinstance(value, str) else str(value)


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _choice(key: str, value: Any, allowed: Iterable[str]) -> str | None:
    allowed = sorted(allowed)
    return None if value in allowed else _bad(key, value, "one of " + ", ".join(allowed))


def _at_least(key: str, value: Any, low: float, strict: bool = False) -> str | None:
    ok = _num(value) and (value > low if strict else value >= low)
    return None if ok else _bad(key, value, f"a number {'>' if strict else '>='} {low:g}")


def _within(key: str, value: Any, low: float, high: float, high_open: bool = True) -> str | None:
    ok = _num(value) and low <= value and (value < high if high_open else value <= high)
    return None if ok else _bad(key, value, f"a number in [{low:g}, {high:g}{')' if high_open else ']'}")


def _train_size(cfg: DictConfig) -> int:
    """How many images the training split holds (before any batch is drawn)."""
    d = cfg.data
    size = TRAIN_IMAGES - d.val_size
    return min(size, d.train_limit) if isinstance(d.train_limit, int) else size


def _data(cfg: DictConfig) -> Check:
    d = cfg.data
    yield _at_least("seed", cfg.seed, 0)
    yield _choice("data.name", d.name, DATASETS)
    yield _at_least("data.split_seed", d.split_seed, 0)
    if not (isinstance(d.val_size, int) and 0 <= d.val_size < TRAIN_IMAGES):
        yield _bad("data.val_size", d.val_size,
                   f"an integer in [0, {TRAIN_IMAGES - 1}] (the training set has {TRAIN_IMAGES} images)")
    if d.train_limit is not None and not (isinstance(d.train_limit, int) and d.train_limit >= 1):
        yield _bad("data.train_limit", d.train_limit, "null or an integer >= 1")


def _data_folders(cfg: DictConfig) -> Check:
    d = cfg.data
    if d.dir is not None and not Path(d.dir).expanduser().is_dir():
        yield _bad("data.dir", d.dir, "null or an existing folder holding the four IDX files")
    if (d.cache_dir is not None and Path(d.cache_dir).expanduser().exists()
            and not Path(d.cache_dir).expanduser().is_dir()):
        yield _bad("data.cache_dir", d.cache_dir, "null or a folder (it is created when missing)")


def _model(cfg: DictConfig) -> Check:
    m = cfg.model
    yield _choice("model.name", m.name, ["mlp"])
    yield _at_least("model.hidden_size", m.hidden_size, 1)
    yield _at_least("model.num_hidden_layers", m.num_hidden_layers, 0)
    yield _choice("model.activation", m.activation, registry.ACTIVATIONS)
    yield _at_least("model.negative_slope", m.negative_slope, 0)
    yield _choice("model.init", m.init, registry.INITIALIZERS)
    yield _at_least("model.init_scale", m.init_scale, 0, strict=True)
    yield _within("model.dropout", m.dropout, 0, 1)


def _optimizer(cfg: DictConfig) -> Check:
    o = cfg.optimizer
    yield _choice("optimizer.name", o.name, registry.OPTIMIZERS)
    yield _at_least("optimizer.lr", o.lr, 0, strict=True)
    yield _at_least("optimizer.weight_decay", o.weight_decay, 0)
    if o.name == "sgd":
        yield _within("optimizer.momentum", o.momentum, 0, 1)
        if o.nesterov and not o.momentum > 0:
            yield _bad("optimizer.nesterov", o.nesterov, "false unless optimizer.momentum > 0")
    elif "betas" in o:
        if len(o.betas) != 2 or not all(_num(b) and 0 <= b < 1 for b in o.betas):
            yield _bad("optimizer.betas", o.betas, "two numbers in [0, 1), e.g. [0.9,0.999]")
        yield _at_least("optimizer.eps", o.eps, 0, strict=True)


def _schedule(cfg: DictConfig) -> Check:
    s, t = cfg.schedule, cfg.trainer
    yield _choice("schedule.name", s.name, registry.SCHEDULES)
    yield _at_least("trainer.epochs", t.epochs, 1)
    if _num(t.epochs):
        yield _within("schedule.warmup_epochs", s.warmup_epochs, 0, t.epochs, high_open=False)
    yield _at_least("schedule.step_size", s.step_size, 1)
    yield _within("schedule.gamma", s.gamma, 0, 1, high_open=False)
    if s.name == "cosine" and _num(cfg.optimizer.lr):
        yield _within("schedule.min_lr", s.min_lr, 0, cfg.optimizer.lr)


def _trainer(cfg: DictConfig) -> Check:
    t = cfg.trainer
    yield _at_least("trainer.batch_size", t.batch_size, 1)
    train_size = _train_size(cfg)
    if _num(t.batch_size) and t.batch_size > train_size:
        yield _bad("trainer.batch_size", t.batch_size, f"at most the training split's {train_size} images")
    yield _at_least("trainer.eval_batch_size", t.eval_batch_size, 1)
    yield _choice("trainer.dtype", t.dtype, registry.DTYPES)
    yield _choice("trainer.monitor", t.monitor, MONITORS)
    yield _choice("trainer.test_weights", t.test_weights, ["best", "last"])
    if t.early_stopping_patience is not None:
        yield _at_least("trainer.early_stopping_patience", t.early_stopping_patience, 1)
        if cfg.data.val_size == 0:
            yield _bad("trainer.early_stopping_patience", t.early_stopping_patience,
                       "null when data.val_size=0 (nothing to monitor)")
    if t.threads is not None:
        yield _at_least("trainer.threads", t.threads, 1)
    yield _at_least("trainer.checkpoint_every", t.checkpoint_every, 1)
    yield _at_least("trainer.keep_checkpoints", t.keep_checkpoints, 1)


# Strengths past these leave little of a digit in a 28x28 field (or, for sigma, a field too
# smooth to be more than a shift); below sigma 1 the smoothed field is pixel noise.
MAX_SHIFT_PIXELS = 10
MAX_ROTATION_DEGREES = 180
MAX_SHEAR_DEGREES = 45
MAX_ALPHA = 100
SIGMA_RANGE = (1, 10)


def _augment(cfg: DictConfig) -> Check:
    a = cfg.augment
    yield _choice("augment.name", a.name, ["none", *AUGMENTATIONS])
    if a.name == "shift":
        if not (isinstance(a.max_shift, int) and 0 <= a.max_shift <= MAX_SHIFT_PIXELS):
            yield _bad("augment.max_shift", a.max_shift, f"an integer in [0, {MAX_SHIFT_PIXELS}] (pixels)")
    elif a.name == "affine":
        yield _within("augment.rotation", a.rotation, 0, MAX_ROTATION_DEGREES, high_open=False)
        yield _within("augment.scale", a.scale, 0, 1)
        yield _within("augment.shear", a.shear, 0, MAX_SHEAR_DEGREES, high_open=False)
        yield _within("augment.translate", a.translate, 0, MAX_SHIFT_PIXELS, high_open=False)
    elif a.name == "elastic":
        yield _within("augment.alpha", a.alpha, 0, MAX_ALPHA, high_open=False)
        yield _within("augment.sigma", a.sigma, *SIGMA_RANGE, high_open=False)


def _mlflow(cfg: DictConfig) -> Check:
    ml = cfg.mlflow
    if ml.tracking_uri is not None and not str(ml.tracking_uri).startswith(TRACKING_SCHEMES):
        yield _bad("mlflow.tracking_uri", ml.tracking_uri, "null (the project's mlflow.db), sqlite:///<absolute path>, "
                   "http(s)://host:port, or a database URI (postgresql://, mysql://, mssql://)")
    if not str(ml.experiment_name).strip():
        yield _bad("mlflow.experiment_name", ml.experiment_name, "a non-empty name")
    for key in ("run_name", "sweep_name"):
        name = ml[key]
        if name is not None and not (str(name).strip() and len(str(name)) <= MAX_NAME_CHARS):
            yield _bad(f"mlflow.{key}", name, f"null or a non-empty name of at most {MAX_NAME_CHARS} characters")
    if ml.register_as is not None and not (isinstance(ml.register_as, str) and MODEL_NAME.fullmatch(ml.register_as)):
        yield _bad("mlflow.register_as", ml.register_as,
                   "null or a model name of letters, digits, '_', '.', '-' (at most 100)")
    labels = list(cfg.tags)
    for label in labels:
        if not (isinstance(label, str) and LABEL.fullmatch(label)):
            yield _bad("tags", labels,
                       "a list of short labels: lowercase letters, digits, '_' and '-', at most 40 characters each")
        elif label in OWN_TAGS:
            yield _bad("tags", labels, f"labels other than the project's own tag names ({label!r} is one)")
    if len(set(labels)) != len(labels):
        yield _bad("tags", labels, "each label once")
    if cfg.notes is not None and not (isinstance(cfg.notes, str) and 0 < len(cfg.notes) <= MAX_TAG_CHARS):
        shown = cfg.notes if not isinstance(cfg.notes, str) or len(cfg.notes) <= 40 else cfg.notes[:40] + "..."
        yield _bad("notes", shown, f"null or a text of 1 to {MAX_TAG_CHARS} characters")


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
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _resources(cfg: DictConfig) -> Check:
    """Refuse, before any allocation, a network that cannot fit in memory."""
    needed, free = estimated_bytes(cfg), available_bytes()
    if free is None or needed <= free:
        return
    gib = 1024**3
    yield (
        f"model.hidden_size={cfg.model.hidden_size} (x{cfg.model.num_hidden_layers} layers, batch "
        f"{cfg.trainer.batch_size}, {cfg.trainer.dtype}) needs about {needed / gib:.1f} GiB but "
        f"{free / gib:.1f} GiB is available; expected a smaller network or batch"
    )
