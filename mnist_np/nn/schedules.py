"""Learning-rate schedules: the learning rate as a function of training progress, in epochs."""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES: tuple[str, ...] = ("constant", "step", "cosine")


@dataclass(frozen=True)
class Schedule:
    """Learning rate as a function of training progress.

    ``lr(t)`` with ``t`` in epochs (fractional: batch ``k`` of an epoch of
    ``S`` batches in epoch ``e`` is ``t = e + k / S``), so schedules are
    smooth per step yet configured in epochs.

    - ``constant``: ``base_lr``
    - ``step``: ``base_lr * gamma ** floor(t / step_size)``
    - ``cosine``: from ``base_lr`` down to ``min_lr`` over the epochs after warm-up
    - linear warm-up (any kind): the schedule's value scaled from
      ``1 / warmup_steps`` up to 1 over the first ``warmup_epochs``.
    """

    name: str
    base_lr: float
    total_epochs: int
    warmup_epochs: float = 0.0
    step_size: int = 10
    gamma: float = 0.1
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise KeyError(f"schedule={self.name!r} is not known; allowed: {', '.join(SCHEDULES)}")

    def base(self, t: float) -> float:
        """The schedule's value at epoch ``t``, before warm-up."""
        if self.name == "constant":
            return self.base_lr
        if self.name == "step":
            return self.base_lr * self.gamma ** math.floor(t / self.step_size)
        if self.name == "cosine":
            span = max(self.total_epochs - self.warmup_epochs, 1e-12)
            progress = min(max((t - self.warmup_epochs) / span, 0.0), 1.0)
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        raise AssertionError(f"unreachable: {self.name!r} passed __post_init__")  # pragma: no cover

    def lr_at_step(self, epoch: int, batch: int, steps_per_epoch: int) -> float:
        """Learning rate for batch ``batch`` (0-based) of epoch ``epoch`` (0-based).

        Warm-up scales the schedule by ``step / warmup_steps`` with steps
        counted from 1, so the very first update already moves the weights.
        """
        value = self.base(epoch + batch / steps_per_epoch)
        warmup_steps = self.warmup_epochs * steps_per_epoch
        step = epoch * steps_per_epoch + batch + 1
        if step < warmup_steps:
            value *= step / warmup_steps
        return value
