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
shared mapping), have a GIL each, and meet through counters in shared memory
that they poll, which takes about a microsecond. A waiting process spins for
up to 50 ms and then sleeps in 1 ms naps, so between epochs it gives the
core back. The poll protocol relies on x86-64's ordering of stores; other
machines, and systems other than Linux, use the plain one-process stepper
(see :func:`mnist_np.train.stepper.can_shard`).

Determinism: the shard count depends only on the batch size and the thread
count, every product is single-threaded, the shards' gradients are added in
a fixed order, and dropout masks are drawn for the whole batch from one
generator before it is split. Same config and thread count, same bits.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

import numpy as np

from mnist_np.nn.model import MLP, Workspace
from mnist_np.nn.optim import Optimizer
from mnist_np.train.forked import Reports, exited, fork_worker, reap, shared_zeros
from mnist_np.train.stepper import BatchDropout, gather, shard_count
# Poll this long before napping: within a step the other side is at most a
# shard's work away; a wait this long means the caller is between epochs
# (evaluating, logging), where a millisecond's nap costs nothing. Short naps
# would not help: a sleep on a virtual machine lasts a millisecond or two.
SPIN_SECONDS = 0.05
NAP_SECONDS = 0.001


class ShardFailed(RuntimeError):
    """A shard's worker process raised an error or died."""


# Slots of the shared control counters.
_GO, _STOP, _ROWS = 0, 1, 2  # step number published by the caller; stop; rows in the batch


class ShardedStepper:
    """Runs training steps of ``model`` with ``optimizer`` on ``x: (N, 784)``, ``y: (N,)`` in shard processes.

    Use as a context manager: it owns worker processes, forked on entry to
    the ``with`` block and stopped on exit. Call
    :meth:`sync` before reading the parameters: the last step's update may
    still be running in the workers when :meth:`step` returns.
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
        if self.shards < 2:
            raise ValueError(f"{self.batch_size} rows on {threads} thread(s) make one shard: use the plain Stepper")
        self.blas_threads = 1  # each shard has its own core
        alloc = shared_zeros
        self.grads = optimizer.attach(model.params, self.shards, parts=self.shards, alloc=alloc)
        self._rows = math.ceil(self.batch_size / self.shards)
        # Drawn by the caller for the whole batch, read by every shard.
        self.dropout = BatchDropout(model, self.batch_size, dropout_rng, alloc)
        # What a step hands to the workers, and what they hand back, all shared.
        s = self.shards
        self._ctl = alloc((3,), np.int64)
        self._done = alloc((2, s), np.int64)  # per shard: step whose gradients are in; step whose update part is done
        self._reports = Reports(s)
        self._idx = alloc((self.batch_size,), np.int64)  # the batch's rows
        self._lr = alloc((1,), np.float64)
        self._results = alloc((s, 2), np.float64)  # per shard: loss sum, correct count
        # Flat views for the polls: indexing a memoryview is ~20x cheaper than a NumPy comparison.
        self._gradients_in, self._updated = memoryview(self._done[0]), memoryview(self._done[1])
        self._step = 0
        self._workers: dict[int, int] = {}  # shard -> pid
        self._workspace: Workspace | None = None

    def __enter__(self) -> "ShardedStepper":
        self._workspace = self.model.workspace(self._rows)
        try:
            for k in range(1, self.shards):
                self._workers[k] = self._fork(k)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the workers (they see the flag within a poll) and reap them; kill any that hang."""
        self._ctl[_STOP] = 1
        reap(list(self._workers.values()))
        self._workers = {}

    # ------------------------------------------------------------------ caller

    def step(self, idx: np.ndarray, lr: float) -> tuple[float, int]:
        """Train on the rows ``idx`` at learning rate ``lr``; returns ``(loss_sum, correct)``."""
        assert self._workspace is not None, "use the stepper as a context manager"
        self.sync()  # the previous step's update parts are in
        m = len(idx)
        self._step += 1
        self._idx[:m] = idx  # where the workers read it
        self.dropout.draw(m)
        self._ctl[_ROWS] = m
        self._lr[0] = lr
        self._ctl[_GO] = self._step  # the workers start
        self._run(0, self._workspace, self._step)
        return float(self._results[:, 0].sum()), int(self._results[:, 1].sum())

    def sync(self) -> None:
        """Wait until the last step's update has finished in every process."""
        step, updated = self._step, self._updated
        _poll(lambda: all(updated[k] == step for k in range(self.shards)), self._check_workers)

    def _check_workers(self) -> None:
        """Raise :class:`ShardFailed` if a worker reported an error or is gone."""
        for k, pid in list(self._workers.items()):
            if (message := self._reports.message(k)) is not None:
                raise ShardFailed(f"shard {k} of {self.shards}: {message}")
            if (ended := exited(pid)) is not None:
                del self._workers[k]
                raise ShardFailed(f"shard {k} of {self.shards}: its process ended unexpectedly ({ended})")

    # ------------------------------------------------------------------ both sides

    def _run(self, k: int, ws: Workspace, step: int) -> None:
        """Shard ``k``'s gradients, then (when every shard's are in) part ``k`` of the update."""
        m = int(self._ctl[_ROWS])
        per = math.ceil(m / self.shards)
        lo, hi = min(k * per, m), min((k + 1) * per, m)
        if lo == hi:  # a short last batch can leave a shard empty
            for g in self.grads[k].values():
                g.fill(0)
            self._results[k] = 0.0
        else:
            idx = self._idx[lo:hi]
            gather(self.x, idx, ws)
            masks = [mask[lo:hi] for mask in self.dropout.masks] or None
            self._results[k] = self.model.gradients(ws, hi - lo, self.y[idx], self.grads[k], 1.0 / m, masks)
        self._done[0, k] = step
        got = self._gradients_in
        _poll(lambda: all(got[j] == step for j in range(self.shards)), self._check_workers if k == 0 else self._check_parent)
        plan = self.optimizer.plan(float(self._lr[0]))
        self.optimizer.swap_buffers()
        self.optimizer.update(plan, k)
        self._done[1, k] = step

    # ------------------------------------------------------------------ workers

    def _fork(self, k: int) -> int:
        self._parent = os.getpid()
        return fork_worker(lambda: self._serve(k), self._reports, k)

    def _serve(self, k: int) -> None:
        ws = self.model.workspace(self._rows)
        ctl = memoryview(self._ctl)
        seen = 0
        while True:
            _poll(lambda: ctl[_GO] != seen or ctl[_STOP] != 0, self._check_parent)
            if self._ctl[_STOP]:
                return
            seen = int(self._ctl[_GO])
            self._run(k, ws, seen)

    def _check_parent(self) -> None:
        if os.getppid() != self._parent or self._ctl[_STOP]:
            os._exit(0)  # the parent is gone (killed, or done): nobody waits for this process


def _poll(ready: Callable[[], bool], check: Callable[[], None]) -> None:
    """Return when ``ready()``; spin for ``SPIN_SECONDS``, then nap; ``check()`` now and then."""
    if ready():
        return
    start = time.perf_counter()
    spins = 0
    while not ready():
        spins += 1
        if spins % 256 == 0:
            check()
            if time.perf_counter() - start > SPIN_SECONDS:
                time.sleep(NAP_SECONDS)
