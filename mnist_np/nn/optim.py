"""Optimizers: SGD (with momentum, Nesterov) and Adam/AdamW, updating parameters from gradients.

An optimizer keeps the parameters, its own state (momentum, Adam moments)
and the gradients of every shard of the mini-batch as the rows of one
matrix, ``P`` columns wide for the ``P`` numbers in all parameters together.
A *block* of rows is ``[w; slot_1; ...; g_1; ...; g_s]``: the parameters
(the model's arrays are views of that row), one row per state slot
(``velocity``; ``m``, ``v``) and one gradient row per shard (the model
writes them).

The layout lets an SGD step be one small matrix product: the update is linear
in ``(weights, velocity, gradients)``, so ``[w'; v'] = C(lr) @ [w; v; g_1;
...; g_s]`` reads the block once, adds up the shards' gradients on the way,
and runs as one BLAS call instead of a string of elementwise passes. A
product cannot write over its own input, so SGD keeps two blocks and each
step writes the other one; both are read in the same row order, so the
arithmetic -- and every bit of the result -- is the same whichever block a
step starts from (a resumed run does not know which one that was). The
columns are cut into parts, one per shard process, that can be updated at the
same time. State is keyed by parameter name in :meth:`Optimizer.state_dict`
(``velocity/W1``), as checkpoints store it.

Weight decay applies to weight matrices (``W*``) only: decaying biases only
hurts (Loshchilov & Hutter, 2019, follow the same convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


def _decays(name: str) -> bool:
    return name.startswith("W")


Chunk = tuple[int, int, bool]  # columns [lo, hi) of parameters that all decay, or all do not


class Optimizer:
    """The shared machinery: the state matrix, its rows as named views, and column parts.

    Use: ``grads = opt.attach(model.params, shards)``, fill ``grads[k]``,
    then ``opt.step(lr)``. From several processes: ``plan = opt.plan(lr)``
    once; after every shard's gradients are in, ``opt.swap_buffers()``
    once; then ``opt.update(plan, part)`` for every part, in any order or
    in parallel (worker processes keep a copy of the optimizer in step by
    calling ``plan`` and ``swap_buffers`` too; see :mod:`mnist_np.train.sharded`).

    Subclasses name their ``slots`` and how many ``blocks`` they keep, turn
    a learning rate into a per-step :meth:`plan`, and apply it to a chunk of
    columns (:meth:`_update_chunk`).
    """

    slots: tuple[str, ...] = ()
    blocks = 1
    _scratch_rows = 0  # per-part temporaries of a chunk's width

    def __init__(self) -> None:
        self.state: np.ndarray | None = None
        self.shards = 0
        # Kept as the same dict objects for the optimizer's lifetime; their
        # entries are re-pointed when a step moves to the other block.
        self.params: dict[str, np.ndarray] = {}
        self.grads: list[dict[str, np.ndarray]] = []  # one dict per shard
        self._block = 0  # first row of the current block
        self._block_views: dict[int, tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]] = {}
        self._views: dict[str, slice] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._parts: list[list[Chunk]] = []
        self._scratch: list[np.ndarray] = []
        self._pending: dict[str, np.ndarray] = {}

    @property
    def block_rows(self) -> int:
        return 1 + len(self.slots) + self.shards

    def attach(
        self,
        params: dict[str, np.ndarray],
        shards: int = 1,
        parts: int = 1,
        alloc: Callable[[tuple[int, ...], np.dtype], np.ndarray] = np.zeros,
    ) -> list[dict[str, np.ndarray]]:
        """Move ``params`` into the state matrix and return one gradient dict per shard.

        The entries of ``params`` are replaced by views of the matrix (values
        copied), so the model trains the optimizer's copy from now on; read
        them afresh after a step, as a step may re-point them. State loaded
        before (:meth:`load_state_dict`) or kept from an earlier attach is
        carried over; otherwise it starts at zero. ``alloc(shape, dtype)``
        makes the zeroed matrix (e.g. in memory shared with worker processes).
        """
        # Decaying parameters first: the update then needs one chunk per kind, not per parameter.
        names = sorted(params, key=lambda k: not _decays(k))
        sizes = [params[k].size for k in names]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        carried = self.state_dict()
        self.shards = shards
        self.state = alloc((self.blocks * self.block_rows, offsets[-1]), params[names[0]].dtype)
        self._views = {k: slice(offsets[i], offsets[i + 1]) for i, k in enumerate(names)}
        self._shapes = {k: params[k].shape for k in names}
        self._block, self._block_views = 0, {}
        for k in names:
            self.state[0, self._views[k]] = params[k].ravel()
        self.params, self.grads = params, [{} for _ in range(shards)]
        self._point_views()
        self._pending = {}
        self.load_state_dict(carried)
        self._partition(parts)
        return self.grads

    def _row(self, row: int) -> dict[str, np.ndarray]:
        assert self.state is not None
        return {k: self.state[row, s].reshape(self._shapes[k]) for k, s in self._views.items()}

    def _point_views(self) -> None:
        """Point ``params`` and ``grads`` at the current block (views made once per block)."""
        views = self._block_views.get(self._block)
        if views is None:
            first_grad = self._block + 1 + len(self.slots)
            views = self._block_views[self._block] = (
                self._row(self._block), [self._row(first_grad + k) for k in range(self.shards)]
            )
        self.params.update(views[0])
        for grads, block_grads in zip(self.grads, views[1]):
            grads.update(block_grads)

    def _partition(self, parts: int) -> None:
        """Cut the columns into ``parts`` contiguous, equal parts, each a list of chunks.

        A chunk is a run of parameters that all decay or all do not, cut at
        part boundaries: every BLAS call has a fixed cost, so a few large
        calls are faster than many small (or cache-sized) ones.
        """
        assert self.state is not None
        total = self.state.shape[1]
        kinds: list[Chunk] = []
        for name, s in self._views.items():  # decaying parameters come first (see attach)
            if kinds and kinds[-1][2] == _decays(name):
                kinds[-1] = (kinds[-1][0], s.stop, kinds[-1][2])
            else:
                kinds.append((s.start, s.stop, _decays(name)))
        bounds = [round(total * i / parts) for i in range(parts + 1)]
        self._parts = []
        for lo_part, hi_part in zip(bounds[:-1], bounds[1:]):
            chunks = [(max(lo, lo_part), min(hi, hi_part), decays) for lo, hi, decays in kinds]
            self._parts.append([c for c in chunks if c[0] < c[1]])
        widest = max((hi - lo for part in self._parts for lo, hi, _ in part), default=0)
        self._scratch = [np.empty((self._scratch_rows, widest), dtype=self.state.dtype) for _ in range(parts)]

    def plan(self, lr: float) -> Any:
        """Everything one step needs that does not depend on the columns (called once per step)."""
        raise NotImplementedError

    def swap_buffers(self) -> None:
        """Move to the block this step writes (once per step, after the gradients, before the next step)."""
        if self.blocks > 1:
            self._block = (self._block + self.block_rows) % (self.blocks * self.block_rows)
            self._point_views()

    def skip(self, steps: int) -> None:
        """What ``steps`` calls of :meth:`plan` and :meth:`swap_buffers` do to this copy, without any arithmetic.

        For a worker process's copy of the optimizer that sat out steps its
        parent made alone (the state matrix they share has moved on): the
        block in use and the scalars a plan counts (Adam's ``t``) catch up.
        """
        self._skip_scalars(steps)
        for _ in range(steps % self.blocks):
            self.swap_buffers()

    def _skip_scalars(self, steps: int) -> None:
        pass

    def update(self, plan: Any, part: int = 0) -> None:
        """Apply ``plan`` to the columns of ``part`` (parts may run in parallel processes)."""
        for lo, hi, decays in self._parts[part]:
            self._update_chunk(plan, lo, hi, decays, self._scratch[part][:, : hi - lo])

    def _update_chunk(self, plan: Any, lo: int, hi: int, decays: bool, scratch: np.ndarray) -> None:
        raise NotImplementedError

    def step(self, lr: float) -> None:
        """One update of all parameters from the gradients in the shard rows."""
        plan = self.plan(lr)
        self.swap_buffers()
        for part in range(len(self._parts)):
            self.update(plan, part)

    def _scalar_state(self) -> dict[str, np.ndarray]:
        return {}

    def _load_scalar_state(self, state: dict[str, np.ndarray]) -> None:
        pass

    def state_dict(self) -> dict[str, np.ndarray]:
        """State arrays keyed ``"<slot>/<param>"`` (e.g. ``"velocity/W1"``), plus scalars."""
        out = dict(self._pending)
        if self.state is not None:
            for i, slot in enumerate(self.slots, start=self._block + 1):
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
        for i, slot in enumerate(self.slots, start=self._block + 1):
            for k, target in self._row(i).items():
                if f"{slot}/{k}" in arrays:
                    np.copyto(target, arrays[f"{slot}/{k}"], casting="unsafe")


@dataclass(frozen=True)
class _SGDPlan:
    source: slice  # the current block, [w; v; g_1 ... g_s]
    target: slice  # the [w; v] rows of the other block
    coefficients: dict[bool, np.ndarray]  # by "decays"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay.

    ``g = sum of the shards' gradients + wd * w``; ``v = momentum * v + g``;
    plain: ``w -= lr * v``; Nesterov: ``w -= lr * (g + momentum * v)`` (the
    PyTorch formulation, so the two can be compared step for step); without
    momentum ``w -= lr * g`` and there is no velocity.

    All of it is linear, so a step is one product ``[w'; v'] = C @ [w; v;
    g_1; ...; g_s]`` from one block into the other; Nesterov, for instance,
    expands to ``w' = w - lr * ((1 + m) * g + m^2 * v)``.
    """

    blocks = 2

    def __init__(self, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0) -> None:
        super().__init__()
        if nesterov and momentum <= 0:
            raise ValueError("nesterov needs momentum > 0")
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.slots = ("velocity",) if momentum else ()

    def coefficients(self, lr: float, weight_decay: float) -> list[list[float]]:
        """``C``: ``1 + slots`` rows (new ``w``, new ``v``) over the block ``[w; v; g_1 ... g_s]``."""
        s, mu, wd = self.shards, self.momentum, weight_decay
        if not mu:
            return [[1 - lr * wd] + [-lr] * s]
        scale = lr * (1 + mu) if self.nesterov else lr  # how much of this step's g reaches w
        return [
            [1 - scale * wd, -lr * mu * (mu if self.nesterov else 1)] + [-scale] * s,
            [wd, mu] + [1.0] * s,
        ]

    def plan(self, lr: float) -> _SGDPlan:
        assert self.state is not None
        other = (self._block + self.block_rows) % (2 * self.block_rows)
        dtype = self.state.dtype
        return _SGDPlan(
            source=slice(self._block, self._block + self.block_rows),
            target=slice(other, other + 1 + len(self.slots)),
            coefficients={d: np.array(self.coefficients(lr, self.weight_decay if d else 0.0), dtype=dtype)
                          for d in (True, False)},
        )

    def _update_chunk(self, plan: _SGDPlan, lo: int, hi: int, decays: bool, scratch: np.ndarray) -> None:
        assert self.state is not None
        np.matmul(plan.coefficients[decays], self.state[plan.source, lo:hi], out=self.state[plan.target, lo:hi])


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
    Updates in place; the shards' gradients are added up in the first
    shard's row.
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

    def _skip_scalars(self, steps: int) -> None:
        self.t += steps

    def _update_chunk(self, plan: _AdamPlan, lo: int, hi: int, decays: bool, scratch: np.ndarray) -> None:
        assert self.state is not None
        w, m, v, g, *more = self.state[:, lo:hi]
        for other in more:
            g += other
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
