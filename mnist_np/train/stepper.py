"""One training step -- a mini-batch's gradients, then the update -- in this process.

:class:`Stepper` is the tutorial's step, written out: gather the batch,
forward, loss, backward, update. It serves one core (and BLAS may spread
each matrix product over several). With more cores and batches large enough
to split, :class:`mnist_np.train.sharded.ShardedStepper` runs the same step
as shards in several processes; :func:`shard_count` decides which.

Both keep every buffer preallocated, draw dropout masks for the whole batch
from one generator before any split, and take the training images either as
floats or as ``uint8`` pixels scaled as each batch is gathered. Same config
and thread count, same bits.
"""

from __future__ import annotations

import platform
from typing import Callable

import numpy as np

from mnist_np.common.procs import forks_safely
from mnist_np.nn.dropout import dropout_mask
from mnist_np.nn.losses import softmax_cross_entropy
from mnist_np.nn.model import MLP, Workspace
from mnist_np.nn.optim import Optimizer

# Below this many rows per shard, a second process's fixed costs per step
# outweigh the arithmetic it takes over (measured: 16-row shards still win
# at batch 32 on two cores).
MIN_SHARD_ROWS = 16


def can_shard() -> bool:
    """Whether this machine runs shards as processes: where it may fork, on x86-64 (see
    :mod:`mnist_np.train.sharded`)."""
    return forks_safely() and platform.machine().lower() in ("x86_64", "amd64")


def shard_count(batch_size: int, threads: int) -> int:
    """How many shards (and processes) a batch of ``batch_size`` rows is split into (1: the plain :class:`Stepper`)."""
    if threads < 2 or not can_shard():
        return 1
    return max(1, min(threads, batch_size // MIN_SHARD_ROWS))


class Stepper:
    """Training steps of ``model`` with ``optimizer`` on ``x: (N, 784)``, ``y: (N,)``, one process.

    Use as a context manager (the workspace is allocated on entry), call
    :meth:`step` once per mini-batch. ``threads`` is the number of BLAS
    threads each product may use.
    """

    def __init__(
        self,
        model: MLP,
        optimizer: Optimizer,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        threads: int = 1,
        dropout_rng: np.random.Generator | None = None,
    ) -> None:
        self.model, self.optimizer, self.x, self.y = model, optimizer, x, y
        self.batch_size = min(batch_size, len(y))
        self.blas_threads = threads
        (self.grads,) = optimizer.attach(model.params)
        self.dropout = BatchDropout(model, self.batch_size, dropout_rng, np.zeros)
        self.ws: Workspace | None = None

    def __enter__(self) -> "Stepper":
        self.ws = self.model.workspace(self.batch_size)
        return self

    def __exit__(self, *exc: object) -> None:
        self.ws = None

    def step(self, idx: np.ndarray, lr: float) -> tuple[float, int]:
        """Train on the rows ``idx: (m,)`` at learning rate ``lr``; returns ``(loss summed over the m rows,
        correct)``."""
        assert self.ws is not None, "use the stepper as a context manager"
        m, ws, model = len(idx), self.ws, self.model
        gather(self.x, idx, ws)  # ws.x[:m] = x[idx] as floats
        y = self.y[idx]
        masks = self.dropout.draw(m)  # (m, H) per hidden layer, or None
        logits = model.forward_train(ws, m, masks)  # forward: (m, C)
        correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
        loss, dlogits = softmax_cross_entropy(logits, y, 1.0 / m)  # loss, and its gradient over the logits
        model.backward(ws, m, dlogits, self.grads, masks)  # backward: the optimizer's gradient row
        self.optimizer.step(lr)  # update
        return loss * m, correct

    def sync(self) -> None:
        """Nothing to wait for: a step's update is done when :meth:`step` returns."""


class BatchDropout:
    """Inverted-dropout masks for a whole batch, one ``(batch, H)`` buffer per hidden layer.

    Drawn from one generator before the batch is split into shards, so the
    masks never depend on the shard count. ``alloc(shape, dtype)`` makes the
    buffers (in shared memory for shard processes).
    """

    def __init__(self, model: MLP, rows: int, rng: np.random.Generator | None,
                 alloc: Callable[[tuple[int, ...], np.dtype], np.ndarray]) -> None:
        self.rate, self.rng = model.dropout, rng
        self.masks: list[np.ndarray] = []
        if self.rate > 0:
            if rng is None:
                raise ValueError("dropout needs a random generator")
            self.masks = [alloc((rows, h), model.dtype) for h in model.sizes[1:-1]]
            self._keep = [np.empty((rows, h), dtype=bool) for h in model.sizes[1:-1]]

    def draw(self, m: int) -> list[np.ndarray] | None:
        """New masks for a batch of ``m`` rows: views ``(m, H)`` of the buffers, or None without dropout."""
        if not self.masks:
            return None
        for buf, keep in zip(self.masks, self._keep):
            dropout_mask(self.rng, buf[:m], self.rate, keep[:m])  # type: ignore[arg-type]
        return [buf[:m] for buf in self.masks]


def gather(x: np.ndarray, idx: np.ndarray, ws: Workspace) -> None:
    """Rows ``idx`` of ``x`` into ``ws.x``: copied if float, scaled by 1/255 if uint8 pixels.

    Pixels are a quarter of the bytes to fetch from scattered rows, and
    ``k / 255`` computed here is the same float ``mnist_np.data.splits``
    computes for the other splits.
    """
    n = len(idx)
    # mode="clip": with mode="raise" numpy buffers `out` (the indices are valid).
    if x.dtype != np.uint8:
        np.take(x, idx, axis=0, out=ws.x[:n], mode="clip")
        return
    if ws.pixels is None:
        ws.pixels = np.empty(ws.x.shape, dtype=np.uint8)
    np.take(x, idx, axis=0, out=ws.pixels[:n], mode="clip")
    np.divide(ws.pixels[:n], ws.x.dtype.type(255), out=ws.x[:n])
