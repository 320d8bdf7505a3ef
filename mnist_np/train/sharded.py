"""The training step of :mod:`mnist_np.train.stepper`, split over several cores as shard processes.

The batch is cut into ``shards`` of consecutive rows and each shard runs on
its own core, in its own process, with single-threaded BLAS:

- shard ``k``'s forward and backward pass (:meth:`MLP.gradients`) writes row
  ``k`` of gradients in the optimizer's state matrix;
- once every shard is in, each process updates its own part of the columns
  (:meth:`Optimizer.update`), adding up the shards' gradients as it goes.

Why processes, not threads: at these sizes a shard's step is a few hundred
microseconds made of a dozen NumPy calls, and two threads hand the GIL back
and forth at every call -- each hand-over waking a sleeping thread, which
costs tens of microseconds on a virtual machine. Forked processes share the
data (copy-on-write), the parameters and the state matrix (an anonymous
shared mapping), have a GIL each, and meet through doorbells
(:class:`mnist_np.common.waits.Doorbell`): a waiting process tries for up
to a few hundred microseconds -- within a step the other side is about
that far -- and then sleeps until it is rung, so it never holds a core
for longer than that while the process it waits for needs it. Every store a step hands over is made before the ring
that announces it (the semaphore's operations order memory as POSIX
requires). Other systems than Linux on x86-64 use the plain one-process
stepper (see :func:`mnist_np.train.stepper.can_shard`).

When the machine gets busy -- another run, a busy neighbour, fewer cores
than the thread count -- the caller may compute every shard itself, one
after the other, while the other processes sleep (:mod:`mnist_np.train.pace`
decides, from the step times it measures). There the products that work
row by row (the forward pass, the gradient flowing back into a hidden
layer) are made once for the whole batch, and only those that add rows up
shard by shard (:meth:`MLP.shard_gradients`): fewer, larger calls, and the
same bits wherever BLAS computes a row the same whatever the rows around
it -- checked on the first such step of each batch length against shard
after shard, which is kept where they differ (:attr:`ShardedStepper.fused`).
A worker that sat out some steps brings its copy of the optimizer's
bookkeeping up to date (:meth:`Optimizer.skip`) before it takes part again.

Determinism: the shard count depends only on the batch size and the thread
count, never on the load or on who computes a shard; every product is
single-threaded, the shards' gradients are added in a fixed order, and
dropout masks are drawn for the whole batch from one generator before it is
split. Same config and thread count, same bits.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from mnist_np.common.cores import IdleMeter
from mnist_np.common.waits import Doorbell
from mnist_np.nn.model import MLP, Workspace
from mnist_np.nn.optim import Optimizer
from mnist_np.train.forked import Reports, exited, fork_worker, reap, shared_zeros
from mnist_np.train.pace import Pace
from mnist_np.train.stepper import BatchDropout, gather, shard_count


class ShardFailed(RuntimeError):
    """A shard's worker process raised an error or died."""


# Slots of the shared control counters.
_GO, _STOP, _ROWS = 0, 1, 2  # step number published by the caller; stop; rows in the batch


class ShardedStepper:
    """Runs training steps of ``model`` with ``optimizer`` on ``x: (N, 784)``, ``y: (N,)`` in shard processes.

    Use as a context manager: it owns worker processes, forked on entry to
    the ``with`` block and stopped on exit. Call
    :meth:`sync` before reading the parameters: the last step's update may
    still be running in the workers when :meth:`step` returns. ``pace``
    decides step by step whether the workers take part (default: a
    :class:`Pace` that measures, and looks at the idle cores).
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
        pace: Pace | None = None,
    ) -> None:
        self.model, self.optimizer, self.x, self.y = model, optimizer, x, y
        self.batch_size = min(batch_size, len(y))
        self.shards = shard_count(self.batch_size, threads)
        if self.shards < 2:
            raise ValueError(f"{self.batch_size} rows on {threads} thread(s) make one shard: use the plain Stepper")
        self.blas_threads = 1  # each shard has its own core
        self.pace = Pace(idle=IdleMeter()) if pace is None else pace
        alloc = shared_zeros
        self.grads = optimizer.attach(model.params, self.shards, parts=self.shards, alloc=alloc)
        self._rows = math.ceil(self.batch_size / self.shards)
        # Drawn by the caller for the whole batch, read by every shard.
        self.dropout = BatchDropout(model, self.batch_size, dropout_rng, alloc)
        # What a step hands to the workers, and what they hand back, all shared.
        s = self.shards
        self._ctl = alloc((3,), np.int64)
        self._reports = Reports(s)
        self._idx = alloc((self.batch_size,), np.int64)  # the batch's rows
        self._lr = alloc((1,), np.float64)
        self._results = alloc((s, 2), np.float64)  # per shard: loss sum, correct count
        # go[k]: worker k may start the published step (or stop); arrived[k]: one more shard's gradients are in,
        # rung for shard k by every other shard; updated: one more worker's update part is done.
        self._go = [Doorbell() for _ in range(s)]
        self._arrived = [Doorbell() for _ in range(s)]
        self._updated = Doorbell()
        self._step = 0
        self._unsynced = 0  # update parts the caller has not yet waited for
        self._workers: dict[int, int] = {}  # shard -> pid
        self._workspace: Workspace | None = None
        self._whole: Workspace | None = None  # the whole batch's rows, for the caller's in-caller steps
        #: rows -> whether an in-caller step of that many rows makes the shards' row-wise products once for all rows
        #: (decided on its first such step: only where that gives every shard's bits)
        self.fused: dict[int, bool] = {}
        self._blas_limit: Any = None

    def __enter__(self) -> "ShardedStepper":
        # Single-threaded BLAS here too, whoever called: the caller computes shards like the workers (shard 0
        # always, every shard when the pace says so), and a BLAS that splits a small product over threads may
        # add it up in another order (OpenBLAS 0.3.23 did at 22 rows): the bits would depend on the load.
        self._blas_limit = threadpool_limits(limits=1, user_api="blas")
        self._workspace = self.model.workspace(self._rows)
        try:
            for k in range(1, self.shards):
                self._workers[k] = self._fork(k)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the workers (the flag, then their doorbells) and reap them; kill any that hang."""
        self._ctl[_STOP] = 1
        for k in self._workers:
            self._go[k].ring()
        reap(list(self._workers.values()))
        self._workers = {}
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit = None

    # ------------------------------------------------------------------ caller

    def step(self, idx: np.ndarray, lr: float) -> tuple[float, int]:
        """Train on the rows ``idx`` at learning rate ``lr``; returns ``(loss_sum, correct)``."""
        assert self._workspace is not None, "use the stepper as a context manager"
        parallel = self.pace.step()
        self._sync()  # the previous step's update parts are in
        m = len(idx)
        self._step += 1
        self._idx[:m] = idx  # where the workers read it
        self.dropout.draw(m)
        self._ctl[_ROWS] = m
        self._lr[0] = lr
        if parallel:
            self._ctl[_GO] = self._step
            for k in range(1, self.shards):
                self._go[k].ring()  # after the stores above: the workers see them
            self._run(0, self._workspace)
            self._unsynced = self.shards - 1
        else:  # every shard here, the workers asleep; the same bits as theirs
            self._inline_gradients(m)
            plan = self._plan()
            for k in range(self.shards):
                self.optimizer.update(plan, k)
        return float(self._results[:, 0].sum()), int(self._results[:, 1].sum())

    def sync(self) -> None:
        """Wait until the last step's update has finished in every process (and tell the pace that steps pause)."""
        self._sync()
        self.pace.pause()

    def _sync(self) -> None:
        while self._unsynced:
            self._wait(self._updated)
            self._unsynced -= 1

    def _wait(self, bell: Doorbell) -> None:
        """In the caller: wait for ``bell``, checking on the workers while asleep."""
        if bell.wait(check=self._check_workers):
            self.pace.slept()

    def _check_workers(self) -> None:
        """Raise :class:`ShardFailed` if a worker reported an error or is gone."""
        for k, pid in list(self._workers.items()):
            if (message := self._reports.message(k)) is not None:
                raise ShardFailed(f"shard {k} of {self.shards}: {message}")
            if (ended := exited(pid)) is not None:
                del self._workers[k]
                raise ShardFailed(f"shard {k} of {self.shards}: its process ended unexpectedly ({ended})")

    # ------------------------------------------------------------------ both sides

    def _run(self, k: int, ws: Workspace) -> None:
        """Shard ``k``'s gradients, then (when every shard's are in) part ``k`` of the update."""
        self._gradients(k, ws)
        for j in range(self.shards):
            if j != k:
                self._arrived[j].ring()
        for _ in range(self.shards - 1):
            if k == 0:
                self._wait(self._arrived[0])
            else:
                self._arrived[k].wait(check=self._check_parent)
        self.optimizer.update(self._plan(), k)

    def _gradients(self, k: int, ws: Workspace) -> None:
        """Shard ``k``'s forward and backward pass: its gradient row and its ``(loss sum, correct)``."""
        m = int(self._ctl[_ROWS])
        lo, hi = self._bounds(k, m)
        if lo == hi:
            self._empty(k)
            return
        idx = self._idx[lo:hi]
        gather(self.x, idx, ws)
        masks = [mask[lo:hi] for mask in self.dropout.masks] or None
        self._results[k] = self.model.gradients(ws, hi - lo, self.y[idx], self.grads[k], 1.0 / m, masks)

    def _inline_gradients(self, m: int) -> None:
        """Every shard's gradients in the caller: their row-wise products made once for all ``m`` rows where that
        gives each shard's bits (checked against shard after shard on the first step of ``m`` rows), else shard
        after shard."""
        assert self._workspace is not None
        snapshot = None  # the fused step's gradients and results, on the first step of m rows
        if self.fused.get(m) is not False:
            self._fused_gradients(m)
            if m in self.fused:
                return
            snapshot = [{name: g.copy() for name, g in grads.items()} for grads in self.grads], self._results.copy()
        for k in range(self.shards):
            self._gradients(k, self._workspace)
        if snapshot is not None:  # the shard-by-shard bits are the ones that count
            grads_then, results_then = snapshot
            self.fused[m] = np.array_equal(results_then, self._results) and all(
                np.array_equal(g, now[name]) for now, then in zip(self.grads, grads_then) for name, g in then.items())

    def _fused_gradients(self, m: int) -> None:
        """Every shard's gradient row and ``(loss sum, correct)``, the row-wise products made once for all rows."""
        if self._whole is None:
            self._whole = self.model.workspace(self.batch_size)
        idx = self._idx[:m]
        gather(self.x, idx, self._whole)
        masks = [mask[:m] for mask in self.dropout.masks] or None
        bounds = [self._bounds(k, m) for k in range(self.shards)]
        live = [k for k, (lo, hi) in enumerate(bounds) if lo < hi]  # a short last batch can leave a shard empty
        results = self.model.shard_gradients(self._whole, m, self.y[idx], [(*bounds[k], self.grads[k]) for k in live],
                                             1.0 / m, masks)
        for k in range(len(live), self.shards):  # the empty shards are the last ones
            self._empty(k)
        for k, result in zip(live, results):
            self._results[k] = result

    def _empty(self, k: int) -> None:
        """Shard ``k`` has no rows (a short last batch can leave it none): zero gradients, zero results."""
        for g in self.grads[k].values():
            g.fill(0)
        self._results[k] = 0.0

    def _bounds(self, k: int, m: int) -> tuple[int, int]:
        """Shard ``k``'s rows ``lo:hi`` of a batch of ``m`` rows (empty where a short batch leaves it none)."""
        per = math.ceil(m / self.shards)
        return min(k * per, m), min((k + 1) * per, m)

    def _plan(self) -> Any:
        """This step's plan, and this process's copy of the optimizer moved to the block the step writes."""
        plan = self.optimizer.plan(float(self._lr[0]))
        self.optimizer.swap_buffers()
        return plan

    # ------------------------------------------------------------------ workers

    def _fork(self, k: int) -> int:
        self._parent = os.getpid()
        return fork_worker(lambda: self._serve(k), self._reports, k)

    def _serve(self, k: int) -> None:
        ws = self.model.workspace(self._rows)
        done = 0  # the last step this process took part in
        while True:
            self._go[k].wait(check=self._check_parent)
            if self._ctl[_STOP]:
                return
            step = int(self._ctl[_GO])
            if step > done + 1:  # the caller made the steps between alone
                self.optimizer.skip(step - done - 1)
            self._run(k, ws)
            self._updated.ring()
            done = step

    def _check_parent(self) -> None:
        if os.getppid() != self._parent or self._ctl[_STOP]:
            os._exit(0)  # the parent is gone (killed, or done): nobody waits for this process
