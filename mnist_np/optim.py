"""Optimizers and learning-rate schedules.

An optimizer keeps the parameters, the gradients of every shard of the
mini-batch and its own state (momentum, Adam moments) as the rows of one
matrix, ``(shards + 1 + slots, P)`` for ``P`` numbers in all parameters:

    row 0 .. shards-1   gradients, one row per shard (written by the model)
    row shards          the parameters (the model's arrays are views of it)
    the rows after      the optimizer's state, e.g. ``velocity``

The layout lets an SGD step be one small matrix product: the update is linear
in ``(gradients, weights, velocity)``, so ``[w'; v'] = C(lr) @ [g_1; ...; g_s;
w; v]`` reads every row once, adds up the shards' gradients on the way, and
runs as a BLAS call instead of a string of elementwise passes. The columns
are cut into parts (one per thread) and cache-sized chunks, so several threads
can update disjoint columns at once. State is keyed by parameter name in
:meth:`Optimizer.state_dict` (``velocity/W1``), as checkpoints store it.

Weight decay applies to weight matrices (``W*``) only: decaying biases only
hurts (Loshchilov & Hutter, 2019, follow the same convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


def _decays(name: str) -> bool:
    return name.startswith("W")


Chunk = tuple[int, int, bool]  # columns [lo, hi) of one parameter, and whether it decays


class Optimizer:
    """The shared machinery: the state matrix, its views, parts and chunks.

    Subclasses name their state ``slots``, turn a learning rate into a
    per-step :meth:`plan` and apply it to a chunk of columns in
    :meth:`_update_chunk`. Use: ``grads = opt.attach(model.params, shards)``,
    fill ``grads[k]``, then ``opt.step(lr)`` -- or, from several threads,
    ``plan = opt.plan(lr)`` once and ``opt.update(plan, part)`` per part.
    """

    slots: tuple[str, ...] = ()
    chunk_columns: int | None = None  # None: one chunk per parameter and part

    def __init__(self) -> None:
        self.state: np.ndarray | None = None
        self.shards = 0
        self.grads: list[dict[str, np.ndarray]] = []  # one dict per shard, set by attach
        self._views: dict[str, slice] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._parts: list[list[Chunk]] = []
        self._scratch: list[np.ndarray] = []
        self._pending: dict[str, np.ndarray] = {}

    def attach(self, params: dict[str, np.ndarray], shards: int = 1, parts: int = 1) -> list[dict[str, np.ndarray]]:
        """Move ``params`` into the state matrix and return one gradient dict per shard.

        The entries of ``params`` are replaced by views of the matrix (values
        copied), so the model trains the optimizer's copy from now on. State
        loaded before (:meth:`load_state_dict`) or kept from an earlier attach
        of the same parameters is carried over; otherwise it starts at zero.
        """
        names = list(params)
        dtype = params[names[0]].dtype
        sizes = [params[k].size for k in names]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        views = {k: slice(offsets[i], offsets[i + 1]) for i, k in enumerate(names)}
        carried = self.state_dict()
        self.state = np.zeros((shards + 1 + len(self.slots), offsets[-1]), dtype=dtype)
        self.shards, self._views = shards, views
        self._shapes = {k: params[k].shape for k in names}
        for k in names:
            self.state[shards, views[k]] = params[k].ravel()
            params[k] = self._row(shards)[k]
        self.load_state_dict({**carried, **self._pending})
        self._pending = {}
        self._partition(parts)
        self.grads = [self._row(i) for i in range(shards)]
        return self.grads

    def _row(self, row: int) -> dict[str, np.ndarray]:
        assert self.state is not None
        return {k: self.state[row, s].reshape(self._shapes[k]) for k, s in self._views.items()}

    def _partition(self, parts: int) -> None:
        """Cut the columns into ``parts`` contiguous, equal parts, each a list of chunks."""
        assert self.state is not None
        total = self.state.shape[1]
        bounds = [round(total * i / parts) for i in range(parts + 1)]
        limit = self.chunk_columns or total
        self._parts = []
        for lo_part, hi_part in zip(bounds[:-1], bounds[1:]):
            chunks: list[Chunk] = []
            for name, s in self._views.items():
                lo, hi = max(s.start, lo_part), min(s.stop, hi_part)
                chunks += [(a, min(a + limit, hi), _decays(name)) for a in range(lo, hi, limit)]
            self._parts.append(chunks)
        widest = max((hi - lo for part in self._parts for lo, hi, _ in part), default=0)
        self._scratch = [np.empty((self._scratch_rows, widest), dtype=self.state.dtype) for _ in range(parts)]

    _scratch_rows = 1

    def plan(self, lr: float) -> Any:
        """Everything one step needs that does not depend on the columns (called once per step)."""
        raise NotImplementedError

    def update(self, plan: Any, part: int = 0) -> None:
        """Apply ``plan`` to the columns of ``part`` (parts may run in parallel threads)."""
        for lo, hi, decays in self._parts[part]:
            self._update_chunk(plan, lo, hi, decays, self._scratch[part][:, : hi - lo])

    def _update_chunk(self, plan: Any, lo: int, hi: int, decays: bool, scratch: np.ndarray) -> None:
        raise NotImplementedError

    def step(self, lr: float) -> None:
        """One update of all parameters from the gradients in the shard rows."""
        plan = self.plan(lr)
        for part in range(len(self._parts)):
            self.update(plan, part)

    def _scalar_state(self) -> dict[str, np.ndarray]:
        return {}

    def _load_scalar_state(self, state: dict[str, np.ndarray]) -> None:
        pass

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat state arrays keyed ``"<slot>/<param>"`` (e.g. ``"velocity/W1"``), plus scalars."""
        out = dict(self._pending) if self.state is None else {}
        if self.state is not None:
            for i, slot in enumerate(self.slots, start=self.shards + 1):
                out.update({f"{slot}/{k}": v.copy() for k, v in self._row(i).items()})
        out.update(self._scalar_state())
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore arrays from :meth:`state_dict` (kept until :meth:`attach` when not attached yet)."""
        self._load_scalar_state(state)
        arrays = {k: v for k, v in state.items() if "/" in k}
        if self.state is None:
            self._pending = {k: np.array(v) for k, v in arrays.items()}
            return
        for i, slot in enumerate(self.slots, start=self.shards + 1):
            for k, target in self._row(i).items():
                if f"{slot}/{k}" in arrays:
                    np.copyto(target, arrays[f"{slot}/{k}"], casting="unsafe")


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay.

    ``g = sum of the shards' gradients + wd * w``; ``v = momentum * v + g``;
    plain: ``w -= lr * v``; Nesterov: ``w -= lr * (g + momentum * v)`` (the
    PyTorch formulation, so the two can be compared step for step); without
    momentum ``w -= lr * g`` and there is no velocity.

    All of it is linear, so a step is ``[w'; v'] = C @ [g_1; ...; g_s; w; v]``
    with ``C`` from :meth:`plan`; Nesterov, for instance, expands to
    ``w' = w - lr * ((1 + m) * g + m^2 * v)``.
    """

    chunk_columns = 8192  # the product's output stays in cache until copied back

    def __init__(self, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0) -> None:
        super().__init__()
        if nesterov and momentum <= 0:
            raise ValueError("nesterov needs momentum > 0")
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.slots = ("velocity",) if momentum else ()
        self._scratch_rows = 1 + len(self.slots)

    def coefficients(self, lr: float, weight_decay: float) -> np.ndarray:
        """``C``, ``(1 + slots, shards + 1 + slots)``: new ``[w; v]`` from ``[g_1..g_s; w; v]``."""
        s, mu, wd = self.shards, self.momentum, weight_decay
        c = np.zeros((1 + len(self.slots), s + 1 + len(self.slots)))
        if not mu:
            c[0, :s], c[0, s] = -lr, 1 - lr * wd
        else:
            scale = lr * (1 + mu) if self.nesterov else lr  # how much of this step's g reaches w
            c[0, :s], c[0, s], c[0, s + 1] = -scale, 1 - scale * wd, -lr * mu * (mu if self.nesterov else 1)
            c[1, :s], c[1, s], c[1, s + 1] = 1, wd, mu
        assert self.state is not None
        return c.astype(self.state.dtype)

    def plan(self, lr: float) -> dict[bool, np.ndarray]:
        return {True: self.coefficients(lr, self.weight_decay), False: self.coefficients(lr, 0.0)}

    def _update_chunk(self, plan: dict[bool, np.ndarray], lo: int, hi: int, decays: bool, scratch: np.ndarray) -> None:
        assert self.state is not None
        # The product cannot write over its own input, hence the cache-sized scratch.
        np.matmul(plan[decays], self.state[:, lo:hi], out=scratch)
        self.state[self.shards :, lo:hi] = scratch


@dataclass(frozen=True)
class _AdamPlan:
    lr: float
    step_size: float
    eps_hat: float


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with bias correction.

    ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``;
    ``w -= step * m / (sqrt(v) + eps_hat)`` with both bias corrections folded
    into ``step`` and ``eps_hat``. ``decoupled=False``: weight decay is added
    to the gradient (L2, as in ``torch.optim.Adam``); ``decoupled=True`` is
    AdamW: ``w *= 1 - lr * wd`` separately from the adaptive step.
    The shards' gradients are added up in the first shard's row.
    """

    slots = ("m", "v")
    _scratch_rows = 2

    def __init__(
        self,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled: bool = False,
    ) -> None:
        super().__init__()
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = eps
        self.weight_decay = weight_decay
        self.decoupled = decoupled
        self.t = 0

    def plan(self, lr: float) -> _AdamPlan:
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        # Fold both bias corrections into one scalar step size.
        return _AdamPlan(lr, lr * math.sqrt(1 - b2**self.t) / (1 - b1**self.t), self.eps * math.sqrt(1 - b2**self.t))

    def _update_chunk(self, plan: _AdamPlan, lo: int, hi: int, decays: bool, scratch: np.ndarray) -> None:
        assert self.state is not None
        s = self.shards
        rows = self.state[:, lo:hi]
        g, w, m, v = rows[0], rows[s], rows[s + 1], rows[s + 2]
        for k in range(1, s):
            g += rows[k]
        dt = w.dtype.type
        buf, num = scratch[0], scratch[1]
        if self.weight_decay and decays:
            if self.decoupled:
                w *= dt(1 - plan.lr * self.weight_decay)
            else:
                np.multiply(w, dt(self.weight_decay), out=buf)
                g += buf
        m *= dt(self.beta1)
        np.multiply(g, dt(1 - self.beta1), out=buf)
        m += buf
        v *= dt(self.beta2)
        np.multiply(g, g, out=buf)
        buf *= dt(1 - self.beta2)
        v += buf
        # w -= (step * m) / (sqrt(v) + eps_hat), one buffer per operand.
        np.multiply(m, dt(plan.step_size), out=num)
        np.sqrt(v, out=buf)
        buf += dt(plan.eps_hat)
        num /= buf
        w -= num

    def _scalar_state(self) -> dict[str, np.ndarray]:
        return {"t": np.array(self.t, dtype=np.int64)}

    def _load_scalar_state(self, state: dict[str, np.ndarray]) -> None:
        if "t" in state:
            self.t = int(state["t"])


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
