"""One training step -- a mini-batch's gradients, then the update -- on one core or several.

Why not just let BLAS use every core: at these sizes (a 128 x 784 by 784 x 128
product takes a fraction of a millisecond) a product split over BLAS threads
runs far below the machine's peak, because the threads synchronise inside
every small product, and everything between the products runs on one core.
One core per slice of the work, each running single-threaded BLAS, keeps
every core busy with products running near its own peak:

- the batch is cut into ``shards`` of consecutive rows; each shard's forward
  and backward pass runs on its own core, in its own :class:`Workspace`,
  writing its own row of gradients (:meth:`MLP.gradients`);
- the optimizer's update is cut into column parts the same way
  (:meth:`Optimizer.update`), and adds up the shards' gradients as it goes.

NumPy releases the GIL inside its kernels, so plain threads run them in
parallel; the calling thread does shard 0 and part 0 itself, and a barrier
separates the two phases.

Determinism: the shard count depends only on the batch size and the thread
count, every product is single-threaded, the shards' gradients are added in a
fixed order, and dropout masks are drawn for the whole batch from one
generator before it is split. Same config and thread count, same bits.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from mnist_np.layers import dropout_mask
from mnist_np.model import MLP
from mnist_np.optim import Optimizer

# Below this many rows per shard, a second thread's Python overhead and its
# synchronisation cost more than the arithmetic it takes over.
MIN_SHARD_ROWS = 48


def shard_count(batch_size: int, threads: int) -> int:
    """How many shards (and threads) a batch of ``batch_size`` rows is split into."""
    return max(1, min(threads, batch_size // MIN_SHARD_ROWS))


class Stepper:
    """Runs training steps of ``model`` with ``optimizer`` on ``x: (N, 784)``, ``y: (N,)``.

    Use as a context manager (it owns worker threads when ``shards > 1``) and
    call :meth:`sync` before reading the parameters: the last step's update
    may still be running in the workers when :meth:`step` returns.
    """

    def __init__(
        self,
        model: MLP,
        optimizer: Optimizer,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        threads: int,
        dropout_rng: np.random.Generator | None = None,
    ) -> None:
        self.model, self.optimizer, self.x, self.y = model, optimizer, x, y
        self.batch_size = min(batch_size, len(y))
        self.shards = shard_count(self.batch_size, threads)
        self.grads = optimizer.attach(model.params, self.shards, parts=self.shards)
        self.workspaces = [model.workspace(math.ceil(self.batch_size / self.shards)) for _ in range(self.shards)]
        self.dropout_rng = dropout_rng
        if model.dropout > 0:
            if dropout_rng is None:
                raise ValueError("dropout needs a random generator")
            hidden = model.sizes[1:-1]
            self._masks = [np.empty((self.batch_size, h), dtype=model.dtype) for h in hidden]
            self._keep = [np.empty((self.batch_size, h), dtype=bool) for h in hidden]
        self._results: list[tuple[float, int]] = [(0.0, 0)] * self.shards
        self._pool = _Pool(self.shards - 1, self._phase) if self.shards > 1 else None

    def __enter__(self) -> "Stepper":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.close()

    def step(self, idx: np.ndarray, lr: float) -> tuple[float, int]:
        """Train on the rows ``idx`` at learning rate ``lr``; returns ``(loss_sum, correct)``."""
        masks = None
        if self.model.dropout > 0:
            m = len(idx)
            masks = [dropout_mask(self.dropout_rng, buf[:m], self.model.dropout, keep[:m])  # type: ignore[arg-type]
                     for buf, keep in zip(self._masks, self._keep)]
        job = (idx, masks, self.optimizer.plan(lr))
        if self._pool is None:
            self._phase(0, job, 0)
            self._phase(0, job, 1)
        else:
            self._pool.run(job)
        return sum(r[0] for r in self._results), sum(r[1] for r in self._results)

    def sync(self) -> None:
        """Wait until the last step's update has finished in every thread."""
        if self._pool is not None:
            self._pool.sync()

    def _phase(self, k: int, job: tuple[np.ndarray, list[np.ndarray] | None, Any], phase: int) -> None:
        """Phase 0: shard ``k``'s gradients. Phase 1: part ``k`` of the update."""
        idx, masks, plan = job
        if phase == 1:
            if k == 0:  # the caller, after every shard's gradients are in
                self.optimizer.swap_buffers()
            self.optimizer.update(plan, k)
            return
        per = math.ceil(len(idx) / self.shards)
        lo, hi = min(k * per, len(idx)), min((k + 1) * per, len(idx))
        if lo == hi:  # a short last batch can leave a shard empty
            for g in self.grads[k].values():
                g.fill(0)
            self._results[k] = (0.0, 0)
            return
        ws = self.workspaces[k]
        # mode="clip": with mode="raise" numpy buffers `out` (the indices are valid).
        np.take(self.x, idx[lo:hi], axis=0, out=ws.x[: hi - lo], mode="clip")
        shard_masks = [mask[lo:hi] for mask in masks] if masks is not None else None
        self._results[k] = self.model.gradients(
            ws, hi - lo, self.y[idx[lo:hi]], self.grads[k], 1.0 / len(idx), shard_masks
        )


class _Pool:
    """``workers`` threads running the two phases of each step in lockstep with the caller.

    Each step: the caller publishes a job and meets the workers at the
    barrier; all run phase 0 (thread ``k`` does shard ``k``, the caller shard
    0); they meet again; all run phase 1. The next ``run`` (or ``sync``)
    meets the workers once more, so phase 1 of one step overlaps nothing but
    the caller's bookkeeping. The caller writes the next job only when every
    worker has read the current one (a worker reads it before the barrier
    that ends phase 0; a sync round has a second barrier for the same
    reason). An error in a worker breaks the barrier and is raised in the
    caller; closing breaks it to let the workers go.
    """

    def __init__(self, workers: int, phase: Any) -> None:
        self._phase = phase
        self._barrier = threading.Barrier(workers + 1)
        self._job: Any = None
        self._error: BaseException | None = None
        # NumPy's floating-point error settings are per thread: give the
        # workers the caller's (fit() silences overflow on the way to a NaN).
        self._errstate = np.geterr()
        self._threads = [threading.Thread(target=self._work, args=(k,), daemon=True, name=f"shard-{k}")
                         for k in range(1, workers + 1)]
        for t in self._threads:
            t.start()

    def _work(self, k: int) -> None:
        try:
            with np.errstate(**self._errstate):
                self._loop(k)
        except threading.BrokenBarrierError:
            return
        except BaseException as e:  # handed to the caller, which raises it
            self._error = e
            self._barrier.abort()

    def _loop(self, k: int) -> None:
        while True:
            self._barrier.wait()
            job = self._job
            if job is None:  # a sync: meet again, so the caller cannot publish the next job before this read
                self._barrier.wait()
                continue
            self._phase(k, job, 0)
            self._barrier.wait()
            self._phase(k, job, 1)

    def _wait(self) -> None:
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            if self._error is not None:
                raise self._error from None
            raise

    def run(self, job: Any) -> None:
        self._job = job
        self._wait()
        self._phase(0, job, 0)
        self._wait()
        self._phase(0, job, 1)

    def sync(self) -> None:
        self._job = None
        self._wait()
        self._wait()

    def close(self) -> None:
        self._barrier.abort()
        for t in self._threads:
            t.join(timeout=10)
