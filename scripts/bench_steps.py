"""What a step costs when the caller computes every shard itself (``bench.py steps``).

When another job takes a core, a run's shard processes wait for each other
and :mod:`mnist_np.train.pace` has the caller compute every shard, in order
(the same bits). That step does more than the one-shard step of
``trainer.threads=1``: two shards' gradients to write and to add up, more
NumPy calls. This benchmark times, in one process, steps of the default
network (784-128-10, SGD with Nesterov momentum, uint8 pixels as in a run)
at each batch size:

- ``threads=1``: the plain :class:`mnist_np.train.stepper.Stepper`;
- ``shard by shard``: a 2-shard :class:`mnist_np.train.sharded.ShardedStepper`
  kept in the caller, each shard's forward and backward pass on its own;
- ``fused``: the same, its row-wise products made once for all rows where
  that gives each shard's bits (``ShardedStepper.fused`` says where);
- ``parallel``: the 2-shard stepper on its two processes, for reference.

Each round builds each variant afresh, warms it up, then times its steps;
variants alternate their order every other round; the table gives the median
over rounds of each variant's time per step and of each round's ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from mnist_np.nn.model import MLP
from mnist_np.nn.optim import SGD
from mnist_np.nn.registry import ACTIVATIONS, INITIALIZERS
from mnist_np.train.pace import Pace
from mnist_np.train.sharded import ShardedStepper
from mnist_np.train.stepper import Stepper

VARIANTS = ("threads=1", "shard by shard", "fused", "parallel")
ROWS = 60_000
WARM_UP = 50


class _Always(Pace):
    """A pace that never changes its mind: every step parallel, or every step in the caller."""

    def __init__(self, parallel: bool) -> None:
        super().__init__()
        self.parallel = parallel

    def step(self) -> bool:
        return self.parallel


def _stepper(variant: str, batch: int, x: np.ndarray, y: np.ndarray) -> Stepper | ShardedStepper:
    model = MLP.initialize([784, 128, 10], ACTIVATIONS["relu"](), INITIALIZERS["he"], np.random.default_rng(0))
    optimizer = SGD(momentum=0.9, nesterov=True, weight_decay=5e-4)
    if variant == "threads=1":
        return Stepper(model, optimizer, x, y, batch, threads=1)
    stepper = ShardedStepper(model, optimizer, x, y, batch, threads=2, pace=_Always(variant == "parallel"))
    if variant == "shard by shard":
        stepper.fused[batch] = False
    return stepper


def time_steps(variant: str, batch: int, steps: int, x: np.ndarray, y: np.ndarray) -> tuple[float, bool | None]:
    """Microseconds per step of ``variant`` over ``steps`` full batches after a warm-up; and, for the fused
    variant, whether its steps really were fused."""
    order = np.random.default_rng(1).permutation(ROWS)
    batches = [order[(i * batch) % (ROWS - batch):][:batch] for i in range(WARM_UP + steps)]
    stepper = _stepper(variant, batch, x, y)
    with threadpool_limits(limits=1, user_api="blas"), stepper:
        for rows in batches[:WARM_UP]:
            stepper.step(rows, 0.1)
        stepper.sync()
        start = time.perf_counter()
        for rows in batches[WARM_UP:]:
            stepper.step(rows, 0.1)
        stepper.sync()
        elapsed = time.perf_counter() - start
    fused = stepper.fused.get(batch) if variant == "fused" and isinstance(stepper, ShardedStepper) else None
    return elapsed / steps * 1e6, fused


def bench_steps(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(ROWS, 784), dtype=np.uint8)
    y = rng.integers(0, 10, size=ROWS)
    rows = []
    for batch in args.batch_sizes:
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        fused: set[bool | None] = set()
        for r in range(args.repeats):
            for variant in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
                us, was_fused = time_steps(variant, batch, args.steps, x, y)
                times[variant].append(us)
                if variant == "fused":
                    fused.add(was_fused)

        def ratio(a: str, b: str) -> float:
            return statistics.median(ta / tb for ta, tb in zip(times[a], times[b]))

        row = {"batch": batch, "us_per_step": {v: statistics.median(t) for v, t in times.items()},
               "all_us": times, "fused": fused == {True},
               "shard_by_shard/threads=1": ratio("shard by shard", "threads=1"),
               "fused/threads=1": ratio("fused", "threads=1"), "fused/shard_by_shard": ratio("fused", "shard by shard")}
        rows.append(row)
        us = row["us_per_step"]
        print(f"batch {batch:4d}: " + "  ".join(f"{v} {us[v]:7.1f} µs" for v in VARIANTS)
              + f"  | shard by shard / threads=1 {row['shard_by_shard/threads=1']:.3f}"
              f"  fused / threads=1 {row['fused/threads=1']:.3f}  (fused: {row['fused']})", flush=True)
    return {"benchmark": "steps", "repeats": args.repeats, "steps": args.steps, "rows": rows}


def add_parser(sub: argparse._SubParsersAction, outputs: Path) -> argparse.ArgumentParser:
    p = sub.add_parser("steps", help="a step with every shard in the caller, against trainer.threads=1")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, default=400, help="timed steps per measurement (after a warm-up)")
    p.add_argument("--json", type=Path, default=outputs / "bench-steps.json")
    return p
