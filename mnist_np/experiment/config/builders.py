"""A validated config -> the numeric core's objects: data splits, random streams, model, optimizer, schedule, settings.

The one place where config keys meet constructors. Every value is passed
explicitly, so the schema stays the one source of every default.
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mnist_np import data
from mnist_np.data.augment import AUGMENTATIONS
from mnist_np.nn import registry
from mnist_np.nn.model import MLP
from mnist_np.nn.optim import Optimizer
from mnist_np.nn.schedules import Schedule
from mnist_np.train.augmented import Augmentation
from mnist_np.train.loop import TrainSettings

log = logging.getLogger(__name__)
INPUTS, CLASSES = 784, 10  # 28x28 pixels in, one score per class out


def rng_streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators for init, shuffling, dropout and augmentation, all from the run's seed.

    Spawning (rather than seeding four generators with seed, seed+1, ...)
    gives streams that are statistically independent by construction. A
    stream added later goes last: the n-th spawned child is the same however
    many follow it, so the older streams (and runs) keep their bits.
    """
    names = ("init", "shuffle", "dropout", "augment")
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {n: np.random.default_rng(s) for n, s in zip(names, children)}


def build_model(cfg: DictConfig, rng: np.random.Generator, dtype: np.dtype) -> MLP:
    """The network the config describes: ``784 -> hidden_size x num_hidden_layers -> 10``."""
    m = cfg.model
    activation = registry.lookup(registry.ACTIVATIONS, m.activation, "model.activation")(
        negative_slope=m.negative_slope)
    init = registry.lookup(registry.INITIALIZERS, m.init, "model.init")
    sizes = [INPUTS] + [m.hidden_size] * m.num_hidden_layers + [CLASSES]
    return MLP.initialize(sizes, activation, init, rng, init_scale=m.init_scale, dropout=m.dropout, dtype=dtype)


def build_optimizer(cfg: DictConfig) -> Optimizer:
    """The optimizer ``optimizer.name`` names, with every other key of the group but ``lr`` (the schedule's)."""
    settings = OmegaConf.to_container(cfg.optimizer, resolve=True)
    assert isinstance(settings, dict)
    factory = registry.lookup(registry.OPTIMIZERS, settings.pop("name"), "optimizer.name")
    settings.pop("lr")
    return factory(**settings)


def build_schedule(cfg: DictConfig) -> Schedule:
    """The learning-rate schedule, from ``optimizer.lr`` over ``trainer.epochs``."""
    s = cfg.schedule
    return Schedule(name=s.name, base_lr=cfg.optimizer.lr, total_epochs=cfg.trainer.epochs,
                    warmup_epochs=s.warmup_epochs, step_size=s.step_size, gamma=s.gamma, min_lr=s.min_lr)


def build_augmentation(cfg: DictConfig) -> Augmentation | None:
    """The transform ``augment.name`` names, with the group's other keys as its strengths; None for ``none``."""
    settings = OmegaConf.to_container(cfg.augment, resolve=True)
    assert isinstance(settings, dict)
    name = settings.pop("name")
    return None if name == "none" else registry.lookup(AUGMENTATIONS, name, "augment.name")(**settings)


def train_settings(cfg: DictConfig, threads: int) -> TrainSettings:
    """How the loop trains; the progress bar only on a terminal unless ``trainer.progress`` says."""
    t = cfg.trainer
    return TrainSettings(
        epochs=t.epochs,
        batch_size=t.batch_size,
        eval_batch_size=t.eval_batch_size,
        monitor=t.monitor,
        early_stopping_patience=t.early_stopping_patience,
        progress=sys.stderr.isatty() if t.progress is None else bool(t.progress),
        threads=threads,
    )


def load_splits(cfg: DictConfig) -> tuple[data.RawDataset, data.Splits]:
    """The dataset and its train/val/test split as the config describes them (training images as uint8 pixels)."""
    started = time.perf_counter()
    raw = data.load_dataset(cfg.data.name, data_dir=cfg.data.dir, cache_dir=cfg.data.cache_dir)
    splits = data.make_splits(raw, val_size=cfg.data.val_size, split_seed=cfg.data.split_seed,
                              train_limit=cfg.data.train_limit, dtype=np.dtype(cfg.trainer.dtype), train_pixels=True)
    log.info("data %s: %s (%.1fs)", cfg.data.name, splits.sizes, time.perf_counter() - started)
    return raw, splits


def default_run_name(cfg: DictConfig) -> str:
    """Readable run name from the config, e.g. ``mlp128-sgd-lr0.1-bs128`` (``mlp256x2-...`` for 2 layers,
    ``...-elastic`` augmented)."""
    m, o, t = cfg.model, cfg.optimizer, cfg.trainer
    layers = f"x{m.num_hidden_layers}" if m.num_hidden_layers != 1 else ""
    data_prefix = "" if cfg.data.name == "mnist" else f"{cfg.data.name}-"
    augment = "" if cfg.augment.name == "none" else f"-{cfg.augment.name}"
    return f"{data_prefix}mlp{m.hidden_size}{layers}-{o.name}-lr{o.lr:g}-bs{t.batch_size}{augment}"
