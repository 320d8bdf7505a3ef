"""Optimizers and learning-rate schedules.

Optimizers update a ``{name: array}`` parameter dict in place from a gradient
dict with the same keys; their state (momentum, Adam moments) is keyed by the
same names so it can be saved beside the weights. Weight decay applies to
weight matrices (``W*``) only: decaying biases only hurts (Loshchilov &
Hutter, 2019, follow the same convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np


def _decays(name: str) -> bool:
    return name.startswith("W")


class Optimizer(Protocol):
    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        """Update ``params`` in place using ``grads`` and learning rate ``lr``."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat state arrays (e.g. ``"velocity/W1"``) for checkpoints."""

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore the arrays returned by :meth:`state_dict`."""


class _Scratch:
    """Preallocated temporaries, one per parameter shape and dtype.

    An optimizer step touches every weight several times; doing it with
    ``out=`` into buffers that live across steps avoids allocating (and, past
    glibc's mmap threshold, page-faulting) a fresh array per operation --
    which was most of the step's time. The arithmetic, and so every bit of
    the result, is the same as the plain expressions in the docstrings.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, int], np.ndarray] = {}

    def get(self, name: str, like: np.ndarray, slot: int = 0) -> np.ndarray:
        buf = self._buffers.get((name, slot))
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = self._buffers[(name, slot)] = np.empty_like(like)
        return buf


class SGD:
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay.

    ``g = g + wd * w``; ``v = momentum * v + g``; plain: ``w -= lr * v``;
    Nesterov: ``w -= lr * (g + momentum * v)`` (the PyTorch formulation, so
    the two can be compared step for step). ``grads`` may be overwritten.
    """

    def __init__(self, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0) -> None:
        if nesterov and momentum <= 0:
            raise ValueError("nesterov needs momentum > 0")
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.velocity: dict[str, np.ndarray] = {}
        self._scratch = _Scratch()

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        for name, w in params.items():
            g = grads[name]
            dt = w.dtype.type
            buf = self._scratch.get(name, w)
            if self.weight_decay and _decays(name):
                np.multiply(w, dt(self.weight_decay), out=buf)
                g += buf
            update = g
            if self.momentum:
                v = self.velocity.get(name)
                if v is None:
                    v = self.velocity[name] = np.zeros_like(w)
                v *= dt(self.momentum)
                v += g
                if self.nesterov:
                    np.multiply(v, dt(self.momentum), out=buf)
                    buf += g
                    update = buf
                else:
                    update = v
            np.multiply(update, dt(lr), out=buf)
            w -= buf

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"velocity/{k}": v for k, v in self.velocity.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.velocity = {k.split("/", 1)[1]: v.copy() for k, v in state.items() if k.startswith("velocity/")}


class Adam:
    """Adam (Kingma & Ba, 2015) with bias correction.

    ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``;
    ``w -= step * m / (sqrt(v) + eps_hat)`` with both bias corrections folded
    into ``step`` and ``eps_hat``. ``decoupled=False``: weight decay is added
    to the gradient (L2, as in ``torch.optim.Adam``); ``decoupled=True`` is
    AdamW: ``w *= 1 - lr * wd`` separately from the adaptive step.
    ``grads`` may be overwritten.
    """

    def __init__(
        self,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled: bool = False,
    ) -> None:
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = eps
        self.weight_decay = weight_decay
        self.decoupled = decoupled
        self.t = 0
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}
        self._scratch = _Scratch()

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        # Fold both bias corrections into one scalar step size.
        step_size = lr * math.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        eps_hat = self.eps * math.sqrt(1 - b2**self.t)
        for name, w in params.items():
            g = grads[name]
            dt = w.dtype.type
            buf = self._scratch.get(name, w)
            if self.weight_decay and _decays(name):
                if self.decoupled:
                    w *= dt(1 - lr * self.weight_decay)
                else:
                    np.multiply(w, dt(self.weight_decay), out=buf)
                    g += buf
            m = self.m.get(name)
            if m is None:
                m = self.m[name] = np.zeros_like(w)
                self.v[name] = np.zeros_like(w)
            v = self.v[name]
            m *= dt(b1)
            np.multiply(g, dt(1 - b1), out=buf)
            m += buf
            v *= dt(b2)
            np.multiply(g, g, out=buf)
            buf *= dt(1 - b2)
            v += buf
            # w -= (step * m) / (sqrt(v) + eps_hat), one buffer per operand.
            num = self._scratch.get(name, w, slot=1)
            np.multiply(m, dt(step_size), out=num)
            np.sqrt(v, out=buf)
            buf += dt(eps_hat)
            num /= buf
            w -= num

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {f"m/{k}": a for k, a in self.m.items()}
        state.update({f"v/{k}": a for k, a in self.v.items()})
        state["t"] = np.array(self.t, dtype=np.int64)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.t = int(state["t"])
        self.m = {k[2:]: a.copy() for k, a in state.items() if k.startswith("m/")}
        self.v = {k[2:]: a.copy() for k, a in state.items() if k.startswith("v/")}


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
        raise ValueError(f"unknown schedule {self.name!r}")

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
