"""The training loop: mini-batch gradient descent with events for callbacks.

``fit`` knows nothing about Hydra, MLflow or files. It reports what happens
through :class:`Callback` methods (train start, epoch end, train end) so
tracking, logging and checkpointing plug in from outside, and it raises
:class:`TrainingDiverged` the moment a loss stops being finite.

Per-epoch ``train_loss``/``train_accuracy`` are running figures over the
epoch's mini-batches (as the weights move, with dropout on), which costs
nothing extra; ``val_*`` figures are a full evaluation after the epoch.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import tqdm
from threadpoolctl import threadpool_limits

from mnist_np.nn.metrics import evaluate
from mnist_np.nn.model import MLP
from mnist_np.nn.optim import Optimizer
from mnist_np.nn.schedules import Schedule
from mnist_np.train.augmented import Augmentation, AugmentedEpochs
from mnist_np.train.forked import shared_zeros
from mnist_np.train.sharded import ShardedStepper
from mnist_np.train.stepper import Stepper, shard_count

# tqdm's monitor thread (it lowers a stalled bar's `miniters`) starts with a process's first bar -- ours, a
# download's, MLflow's -- and outlives every bar; the shard processes, augmentation worker and figure children
# forked afterwards, in this run or the next member of a sweep, would be forked with it alive (see
# mnist_np.common.forking). Off for every bar of the process, as tqdm documents: a bar whose steps suddenly
# slow down then redraws late, nothing more.
tqdm.tqdm.monitor_interval = 0

MONITORS = {"val_loss": -1.0, "val_accuracy": 1.0}  # sign: +1 means higher is better
PATIENCE = "patience"  # FitResult.stop_reason of early stopping
# Asked after every epoch with its number (1-based) and metrics; a reason (e.g. "pruned")
# ends the training after that epoch, unless it was the last one anyway.
StopRule = Callable[[int, dict[str, float]], "str | None"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; carries where it happened."""

    def __init__(self, epoch: int, batch: int, loss: float) -> None:
        super().__init__(f"loss became {loss} at epoch {epoch}, batch {batch}; lower optimizer.lr or check the inputs")
        self.epoch, self.batch, self.loss = epoch, batch, loss


@dataclass(frozen=True)
class TrainSettings:
    """How to train (plain values, so the loop needs no config library).

    ``monitor`` picks the epoch whose weights count as best and drives early
    stopping (``early_stopping_patience`` epochs without improvement).
    ``threads``: cores for the batch loop (see :mod:`mnist_np.train.stepper`:
    the batch is split into that many shard processes when large enough);
    the result depends on it, so a run records it.
    """

    epochs: int
    batch_size: int
    eval_batch_size: int = 10_000
    monitor: str = "val_loss"
    early_stopping_patience: int | None = None
    progress: bool = False
    threads: int = 1


@dataclass
class FitResult:
    """What ``fit`` returns: per-epoch metrics and the best epoch's weights."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_params: dict[str, np.ndarray] = field(default_factory=dict)
    stopped_early: bool = False
    stop_reason: str | None = None  # why it stopped early: PATIENCE, or what a stop rule said
    # Early-stopping bookkeeping, kept here so a checkpoint can carry it.
    best_score: float = -math.inf
    since_best: int = 0

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def add_epoch(self, metrics: dict[str, float], model: MLP, settings: TrainSettings, has_val: bool) -> bool:
        """Record the epoch just trained; returns whether it is the best so far (and keeps its weights if so).

        Without a validation split the last epoch counts as the best. Sets
        ``stopped_early`` when the monitored metric has not improved for
        ``early_stopping_patience`` epochs and epochs remain.
        """
        self.history.append(metrics)
        epoch = len(self.history)
        score = MONITORS[settings.monitor] * metrics[settings.monitor] if has_val else float(epoch - 1)
        is_best = score > self.best_score
        if is_best:
            self.best_score, self.since_best = score, 0
            self.best_epoch = epoch
            self.best_params = {k: v.copy() for k, v in model.params.items()}
        else:
            self.since_best += 1
        patience = settings.early_stopping_patience
        self.stopped_early = (patience is not None and has_val and self.since_best >= patience
                              and epoch < settings.epochs)
        self.stop_reason = PATIENCE if self.stopped_early else None
        return is_best

    def stop(self, reason: str) -> None:
        """End the training after the epoch just recorded, for ``reason``."""
        self.stopped_early, self.stop_reason = True, reason


class Callback:
    """Hooks ``fit`` calls; a subclass overrides the ones it needs (the rest do nothing)."""

    def on_train_start(self, model: MLP, settings: TrainSettings) -> None:
        """Before the first epoch (also when resuming)."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model: MLP, is_best: bool) -> None:
        """After epoch ``epoch`` (1-based) with its metrics; ``is_best``: its weights are the best so far."""

    def on_train_end(self, result: FitResult) -> None:
        """After the last epoch (not called when training raised)."""


# Overflow on the way to a NaN loss is reported once, by TrainingDiverged,
# rather than as a stream of NumPy warnings.
@np.errstate(over="ignore", invalid="ignore", divide="ignore")
def fit(
    model: MLP,
    optimizer: Optimizer,
    schedule: Schedule,
    x_train: np.ndarray, y_train: np.ndarray,
    x_val: np.ndarray, y_val: np.ndarray,
    settings: TrainSettings,
    shuffle_rng: np.random.Generator, dropout_rng: np.random.Generator,
    callbacks: Sequence[Callback] = (),
    result: FitResult | None = None,
    stop_rule: StopRule | None = None,
    augmentation: Augmentation | None = None, augment_rng: np.random.Generator | None = None,
) -> FitResult:
    """Train ``model`` in place.

    Args:
        x_train: ``(N, 784)`` float images in the model's dtype, or their
            ``uint8`` pixels (scaled by 1/255 batch by batch, with the same
            result); ``y_train: (N,)`` int labels.
        x_val, y_val: validation split (may be empty: then the last epoch is the best).
        shuffle_rng: reshuffles the training set every epoch.
        dropout_rng: draws dropout masks (its own stream, so turning dropout on does not change the shuffling order).
        result: the state of an interrupted training (from a checkpoint) to
            continue after its last epoch; with the model, optimizer and
            generators restored too, the outcome is bit-identical to an
            uninterrupted run.
        stop_rule: asked after every epoch, before the callbacks hear of it
            (a search's pruner, say); a reason it gives stops the training.
        augmentation, augment_rng: transform the ``uint8`` training pixels anew every epoch
            from that stream (see :mod:`mnist_np.train.augmented`); None: as they are.

    Raises:
        TrainingDiverged: a mini-batch loss was NaN or infinite.
    """
    result = FitResult() if result is None else result
    for cb in callbacks:
        cb.on_train_start(model, settings)
    # A run that stopped early has nothing left to do, even when resumed.
    first = settings.epochs if result.stopped_early else result.epochs_done
    augmented = AugmentedEpochs.of(x_train, augmentation, augment_rng, settings.epochs, alloc=shared_zeros)
    stepper = make_stepper(model, optimizer, x_train if augmented is None else augmented.images, y_train,
                           settings.batch_size, settings.threads, dropout_rng)
    # The evaluation between epochs runs with the stepper's BLAS threads too:
    # BLAS threads, once woken, spin for a while after every product and
    # would take the shard workers' cores. The augmentation thread starts after the fork.
    with threadpool_limits(limits=stepper.blas_threads, user_api="blas"), stepper, augmented or nullcontext():
        for epoch in range(first, settings.epochs):
            metrics = epoch_and_evaluation(stepper, augmented, schedule, epoch, shuffle_rng.permutation(len(y_train)),
                                           x_val, y_val, settings)
            is_best = result.add_epoch(metrics, model, settings, has_val=len(y_val) > 0)
            reason = stop_rule(epoch + 1, metrics) if stop_rule is not None and not result.stopped_early else None
            if reason is not None and epoch + 1 < settings.epochs:
                result.stop(reason)
            for cb in callbacks:
                cb.on_epoch_end(epoch + 1, metrics, model, is_best)
            if result.stopped_early:
                break
    for cb in callbacks:
        cb.on_train_end(result)
    return result


def epoch_and_evaluation(stepper: Stepper | ShardedStepper, augmented: AugmentedEpochs | None, schedule: Schedule,
                         epoch: int, order: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                         settings: TrainSettings) -> dict[str, float]:
    """Epoch ``epoch`` (0-based) trained on the rows in ``order``, its augmented images loaded first if any, then
    the validation split scored: the epoch's metrics (its ``epoch_seconds`` include any wait for the images)."""
    waited = augmented.load(epoch) if augmented is not None else 0.0
    train_loss, train_acc, lr, seconds = train_epoch(stepper, schedule, epoch, order, settings)
    val_loss, val_acc = evaluate(stepper.model, x_val, y_val, settings.eval_batch_size)
    return epoch_metrics(train_loss, train_acc, val_loss, val_acc, lr, waited + seconds, len(order))


def epoch_metrics(train_loss: float, train_acc: float, val_loss: float, val_acc: float, lr: float, seconds: float,
                  samples: int) -> dict[str, float]:
    """One epoch's figures, in the order they are logged and written to ``metrics.jsonl``."""
    return {
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "lr": lr,
        "epoch_seconds": seconds,
        "samples_per_second": samples / seconds if seconds > 0 else math.inf,
    }


def train_epoch(stepper: Stepper | ShardedStepper, schedule: Schedule, epoch: int, order: np.ndarray,
                settings: TrainSettings) -> tuple[float, float, float, float]:
    """One pass over the training rows in ``order: (N,)``, one step per mini-batch.

    Returns ``(train_loss, train_accuracy, lr, seconds)``: the running mean
    loss and accuracy over the epoch's batches, the learning rate at its
    first step, and its wall time. The workers' last update is waited for,
    so the parameters are final when this returns.

    Raises:
        TrainingDiverged: a mini-batch loss was NaN or infinite.
    """
    start = time.perf_counter()
    n, bs = len(order), settings.batch_size
    steps = math.ceil(n / bs)
    loss_sum, correct = 0.0, 0
    for b in _progress(range(steps), settings.progress, epoch, settings.epochs):
        batch_loss, batch_correct = stepper.step(order[b * bs : (b + 1) * bs], schedule.lr_at_step(epoch, b, steps))
        if not math.isfinite(batch_loss):
            raise TrainingDiverged(epoch + 1, b + 1, batch_loss / min(bs, n - b * bs))
        loss_sum += batch_loss
        correct += batch_correct
    stepper.sync()
    return loss_sum / n, correct / n, schedule.lr_at_step(epoch, 0, steps), time.perf_counter() - start


def make_stepper(
    model: MLP, optimizer: Optimizer, x: np.ndarray, y: np.ndarray, batch_size: int, threads: int,
    dropout_rng: np.random.Generator | None,
) -> Stepper | ShardedStepper:
    """The plain one-process :class:`Stepper`, or shard processes when ``threads`` cores can split the batch."""
    if shard_count(min(batch_size, len(y)), threads) > 1:
        return ShardedStepper(model, optimizer, x, y, batch_size, threads, dropout_rng)
    return Stepper(model, optimizer, x, y, batch_size, threads, dropout_rng)


def _progress(steps: Iterable[int], enabled: bool, epoch: int, epochs: int) -> Iterable[int]:
    """A tqdm bar over the epoch's batches when asked for (terminals), else the bare range."""
    if not enabled:
        return steps
    from tqdm.auto import tqdm

    return tqdm(steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False, unit="batch", mininterval=0.25)
