"""Benchmarks, measured side by side in one run and reported as medians and ratios.

    python scripts/bench.py loop                  # our training loop vs the GEMM roofline and PyTorch
    python scripts/bench.py loop --augment-only --augment shift   # only: the best preset with and without augment=shift
    python scripts/bench.py sweep                 # parallel vs basic launcher, 4 members x 10 epochs
    python scripts/bench.py sweep --repeats 5 --members 4 --epochs 10 --json bench-sweep.json
    python scripts/bench.py sweep trainer.threads=1  # ... with single-threaded members in both
    python scripts/bench.py run                   # a whole default `make train` run: time outside the epochs, memory
    python scripts/bench.py run --with mlflow.log_system_metrics=false   # what a key costs a default run
    python scripts/bench.py search                # the same guided search with and without pruning
    python scripts/bench.py search --jobs 2       # 2 workers: the batch-synchronous against the asynchronous search
    python scripts/bench.py contention            # default, threads=1, PyTorch: alone, taskset, quota, neighbour
    python scripts/bench.py contention --code /tmp/before   # ... the same with another checkout's code
    python scripts/bench.py waits                 # the waits between processes: semaphore, eventfd, pipe
    python scripts/bench.py steps                 # a step with every shard in the caller against threads=1
    python scripts/bench.py loop --track          # ... and record the results in the MLflow experiment `benchmarks`
    python scripts/bench.py run --speedups --record   # ... and put the figures the docs quote into docs/figures.json

``loop`` times the project's own training loop (``mnist_np.train.loop.fit``,
built from the config by a run's own builders, ``mnist_np.experiment.config.builders``) per epoch for each
batch size; measures this machine's float32 GEMM peak and so the FLOP lower
bound of an epoch; runs the same MLP in PyTorch with the same batch size and
thread count when torch is installed (``pip install torch==2.13.0``: never a
runtime dependency); and times the tutorial's float64 formulation
(``+experiment=seed_baseline``) for reference. The three are measured in
rounds, side by side, and the ratios taken per round: the machine's speed
drifts by a factor of two over minutes, and a ratio of neighbours does not.
So is the best preset's epoch without and with augmentation (``--augment``,
default: the preset's own), the two alternating within every round.

``run`` runs the default training (``scripts/train.py``, the data already
cached, one store that exists after a first untimed run, as for a user's
second ``make train``) end to end as a subprocess, several times, and
reports its wall time,
the sum of its epoch times, the difference (start-up, data, evaluation,
MLflow, plots and the logged model), and the peak resident memory.

``sweep`` and ``search`` time whole ``--multirun`` sweeps: see ``scripts/bench_sweeps.py``;
``contention`` and ``waits``: see ``scripts/bench_contention.py``; ``steps``: ``scripts/bench_steps.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_contention  # beside this file: speed on a busy machine, waits between processes
import bench_sweeps  # beside this file: the sweep and search benchmarks
import figures  # beside this file: the record of the docs' measured figures

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "scripts" / "train.py"


def gemm_peak(threads: int, n: int = 2048, repeats: int = 7) -> float:
    """float32 GFLOP/s of one large square matrix product (median of ``repeats``)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    times = []
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=out)
        for _ in range(repeats):
            t = time.perf_counter()
            np.matmul(a, b, out=out)
            times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def epoch_flops(sizes: list[int], n: int) -> float:
    """Multiply-adds of one epoch as FLOPs: forward (X W), weight gradients (X^T dZ), and input
    gradients for every layer but the first (dZ W^T)."""
    layers = list(zip(sizes[:-1], sizes[1:]))
    per_sample = sum(2 * i * o for i, o in layers) * 2 + sum(2 * i * o for i, o in layers[1:])
    return per_sample * n


class Ours:
    """The project's training loop on the real data, built as a run builds it; times one fit at a time."""

    def __init__(self, overrides: list[str], threads: int) -> None:
        from mnist_np.experiment.config.builders import load_splits
        from mnist_np.experiment.config.compose import compose

        self.cfg = compose([*overrides, "trainer.progress=false"])
        self.threads = threads
        _, self.splits = load_splits(self.cfg)

    def epochs(self, epochs: int) -> tuple[list[float], list[int]]:
        """Seconds of each epoch of one ``fit`` of ``epochs`` epochs, and the layer sizes."""
        import numpy as np
        from threadpoolctl import threadpool_limits

        from mnist_np.experiment.config.builders import (
            build_augmentation,
            build_model,
            build_optimizer,
            build_schedule,
            rng_streams,
        )
        from mnist_np.train.loop import TrainSettings, fit

        cfg, sp = self.cfg, self.splits
        rngs = rng_streams(cfg.seed)
        model = build_model(cfg, rngs["init"], np.dtype(cfg.trainer.dtype))
        settings = TrainSettings(epochs=epochs, batch_size=cfg.trainer.batch_size,
                                 eval_batch_size=cfg.trainer.eval_batch_size, threads=self.threads)
        with threadpool_limits(limits=self.threads, user_api="blas"):
            result = fit(model, build_optimizer(cfg), build_schedule(cfg), sp.x_train, sp.y_train, sp.x_val, sp.y_val,
                         settings, rngs["shuffle"], rngs["dropout"], augmentation=build_augmentation(cfg),
                         augment_rng=rngs["augment"])
        return [h["epoch_seconds"] for h in result.history], model.sizes


def time_torch(batch_size: int, epochs: int, threads: int, sizes: list[int], n: int) -> list[float] | None:
    """The same MLP and optimizer in PyTorch on the CPU: plain tensors sliced per batch, no DataLoader."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.rand(n, sizes[0])
    y = torch.randint(0, sizes[-1], (n,))
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        perm = torch.randperm(n)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
    return times


def loop_case(name: str, overrides: list[str], compare: bool, args: argparse.Namespace) -> dict:
    """One row of the loop table: ``args.repeats`` rounds of GEMM peak, our epoch and torch's, side by side."""
    threads = args.threads
    ours_loop = Ours(overrides, threads)
    n = len(ours_loop.splits.y_train)
    ours, torch_s, peaks, over_bound, over_torch = [], [], [], [], []
    for _ in range(args.repeats):
        peak = gemm_peak(threads, repeats=3)
        epochs, sizes = ours_loop.epochs(3)
        ours_epoch = statistics.mean(epochs[1:])
        peaks.append(peak)
        ours.append(ours_epoch)
        over_bound.append(ours_epoch / (epoch_flops(sizes, n) / (peak * 1e9)))
        if compare and not args.no_torch:
            t = time_torch(ours_loop.cfg.trainer.batch_size, 3, threads, sizes, n)
            if t:
                torch_s.append(statistics.mean(t[1:]))
                over_torch.append(ours_epoch / torch_s[-1])
    med = statistics.median
    row = {"name": name, "batch_size": int(ours_loop.cfg.trainer.batch_size), "ours_s": med(ours), "ours_all": ours,
           "bound_s": epoch_flops(sizes, n) / (med(peaks) * 1e9) if compare else None,
           "ours_over_bound": med(over_bound) if compare else None,
           "torch_s": med(torch_s) if torch_s else None, "torch_all": torch_s,
           "ours_over_torch": med(over_torch) if over_torch else None, "peaks": peaks}
    print(f"  {name}: ours {row['ours_s']:.3f} s" + (f", torch {row['torch_s']:.3f} s" if torch_s else ""), flush=True)
    return row


def augment_case(augment: str | None, args: argparse.Namespace) -> dict:
    """The best preset's epoch without and with ``augment=<augment>``, side by side in every round.

    Each round times one fit of each (three epochs, the mean of the last two:
    an augmented epoch includes any wait for its images, which the first
    epoch always has), alternating which goes first; the overhead is the
    median over rounds of (augmented / plain - 1).
    """
    if augment is None:  # the preset's own
        from mnist_np.experiment.config.compose import compose

        augment = str(compose(["+experiment=best_mnist"]).augment.name)
    plain = Ours(["+experiment=best_mnist", "augment=none"], args.threads)  # the preset itself augments
    augmented = Ours(["+experiment=best_mnist", f"augment={augment}"], args.threads)
    times: dict[str, list[float]] = {"plain": [], "augmented": []}
    for i in range(args.repeats):
        order = [("plain", plain), ("augmented", augmented)]
        for name, loop in order if i % 2 == 0 else order[::-1]:
            times[name].append(statistics.mean(loop.epochs(3)[0][1:]))
    overhead = [a / p - 1 for p, a in zip(times["plain"], times["augmented"])]
    row = {"name": f"best_mnist, augment={augment}", "augment": augment, "plain_s": statistics.median(times["plain"]),
           "augmented_s": statistics.median(times["augmented"]), "overhead": statistics.median(overhead), "all": times}
    print(f"  best_mnist: {row['plain_s']:.3f} s, with augment={augment} {row['augmented_s']:.3f} s "
          f"({100 * row['overhead']:+.1f}%)", flush=True)
    return row


def bench_loop(args: argparse.Namespace) -> dict:
    """Per batch size, ``repeats`` rounds of: GEMM peak, our epoch, torch's epoch -- side by side.

    Each round measures all three within seconds of each other and takes
    the ratios of that round; the table gives medians over rounds. A fit (or
    torch run) of three epochs is timed by the mean of its last two: the
    first pays for start-up (worker processes, page faults, allocator).
    """
    import numpy as np
    from threadpoolctl import threadpool_info

    from mnist_np.experiment.config.schema import register_configs

    register_configs()
    threads = args.threads
    cases = [(f"default, batch {bs}", [f"trainer.batch_size={bs}"], True) for bs in args.batch_sizes]
    cases.append(("seed_baseline (float64, batch 64)", ["+experiment=seed_baseline"], False))
    rows = ([] if args.augment_only
            else [loop_case(name, overrides, compare, args) for name, overrides, compare in cases])
    augment = augment_case(args.augment, args)
    peaks_all = [p for r in rows for p in r["peaks"]] or [gemm_peak(threads)]
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    from mnist_np.train.stepper import shard_count

    result = {
        "benchmark": "loop", "threads": threads, "repeats": args.repeats,
        "gemm_peak_gflops": statistics.median(peaks_all), "numpy": np.__version__,
        "blas": (f"{blas[0].get('internal_api')} {blas[0].get('version')} ({blas[0].get('architecture')})"
                 if blas else "?"),
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "rows": rows,
        "shards": {bs: shard_count(bs, threads) for bs in args.batch_sizes}, "augment": augment,
    }
    print()
    print(f"float32 GEMM peak: {result['gemm_peak_gflops']:.0f} GFLOP/s with {threads} thread(s) (median of "
          f"{len(peaks_all)}); numpy {np.__version__}, {result['blas']}")
    print(f"medians of {args.repeats} rounds; ratios are medians of each round's ratio")
    print(f"{'':36s}{'ours s':>8s}{'bound s':>9s}{'ours/bound':>11s}{'torch s':>9s}{'ours/torch':>11s}")
    for r in rows:
        f = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
        print(f"{r['name']:36s}{r['ours_s']:8.3f}{f(r['bound_s'], '9.3f'):>9s}{f(r['ours_over_bound'], '11.2f'):>11s}"
              f"{f(r['torch_s'], '9.3f'):>9s}{f(r['ours_over_torch'], '11.2f'):>11s}")
    print(f"{'':36s}{'plain s':>8s}{'augmented s':>12s}{'overhead':>10s}")
    print(f"{augment['name']:36s}{augment['plain_s']:8.3f}{augment['augmented_s']:12.3f}"
          f"{100 * augment['overhead']:9.1f}%")
    return result


def time_run(store: Path, overrides: list[str], speedups: str) -> dict:
    """One default run as a subprocess (``MNIST_NP_SPEEDUPS=speedups``): wall, epoch and outside seconds, peak
    memory."""
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, str(TRAIN), "trainer.progress=false",
               f"mlflow.tracking_uri=sqlite:///{store / 'mlflow.db'}", f"hydra.run.dir={out}", *overrides]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "MNIST_NP_SPEEDUPS": speedups})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"training failed:\n{proc.stderr.read()[-3000:]}")
        epochs = [json.loads(line)["epoch_seconds"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"wall_s": wall, "epochs_s": sum(epochs), "outside_epochs_s": wall - sum(epochs),
            "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9, "epochs": len(epochs)}


def bench_run(args: argparse.Namespace) -> dict:
    """Wall time of whole default runs, the part spent outside the epochs, and peak memory.

    With ``--speedups``, also the same run with each of :mod:`mnist_np.speedups`' shortcuts
    off in turn (the variants alternate within each repeat); a shortcut's saving is the
    median over repeats of (its variant's time outside the epochs - the default's). With
    ``--with KEY=VALUE`` (repeatable), also the run with that override; its cost is the
    median of paired differences (default - variant) of the whole wall time.
    """
    from mnist_np.speedups import NAMES

    variants: dict[str, tuple[str, list[str]]] = {"default": ("all", [])}
    if args.speedups:
        variants.update({f"without {name}": (f"-{name}", []) for name in NAMES if name != "warm_workers"})
    variants.update({f"with {o}": ("all", [o]) for o in args.with_})
    rows: dict[str, list[dict]] = {k: [] for k in variants}
    store = Path(tempfile.mkdtemp(prefix="bench-run-"))
    time_run(store, args.overrides, "all")  # creates the store and fills the data and font caches: not timed
    for i in range(args.repeats):
        for name, (value, extra) in variants.items():
            row = time_run(store, [*args.overrides, *extra], value)
            rows[name].append(row)
            print(f"  run {i + 1}/{args.repeats} {name:32s} wall {row['wall_s']:.2f} s, epochs {row['epochs_s']:.2f} "
                  f"s, outside {row['outside_epochs_s']:.2f} s, peak {row['peak_rss_gb']:.2f} GB", flush=True)
    shutil.rmtree(store, ignore_errors=True)
    keys = ("wall_s", "epochs_s", "outside_epochs_s", "peak_rss_gb")
    medians = {name: {k: statistics.median(r[k] for r in runs) for k in keys} for name, runs in rows.items()}
    med = medians["default"]
    print(f"median: wall {med['wall_s']:.2f} s = epochs {med['epochs_s']:.2f} s + outside "
          f"{med['outside_epochs_s']:.2f} s; peak resident memory {med['peak_rss_gb']:.2f} GB")
    # The shortcuts act outside the epochs, so their time is compared there: the epochs' own
    # noise (a second either way on a shared machine) stays out of the differences.
    saved = {name.removeprefix("without "): statistics.median(r["outside_epochs_s"] - d["outside_epochs_s"]
                                                              for r, d in zip(runs, rows["default"]))
             for name, runs in rows.items() if name.startswith("without ")}
    for name, seconds in saved.items():
        print(f"  {name:24s} saves {seconds:+.2f} s outside the epochs (median of paired differences; "
              f"wall medians {medians['without ' + name]['wall_s']:.2f} s without it, {med['wall_s']:.2f} s with)")
    costs = {}
    for override in args.with_:
        runs = rows[f"with {override}"]
        diffs = [d["wall_s"] - r["wall_s"] for r, d in zip(runs, rows["default"])]
        costs[override] = {"default_minus_variant_s": statistics.median(diffs),
                           "fraction_of_default_wall": statistics.median(diffs) / med["wall_s"]}
        print(f"  the default costs {statistics.median(diffs):+.2f} s "
              f"({100 * costs[override]['fraction_of_default_wall']:+.1f}% of its wall time) more than with {override} "
              "(median of paired differences of the wall time)")
    return {"benchmark": "run", "overrides": args.overrides, "runs": rows["default"], "median": med, "variants": rows,
            "variant_medians": medians, "speedup_saves_s": saved, "costs_vs": costs, "platform": platform.platform(),
            "cpu_count": os.cpu_count()}


def track(result: dict, tracking_uri: str | None) -> None:
    """Record a benchmark's figures as a run in the MLflow experiment ``benchmarks``."""
    from mnist_np.experiment.run.provenance import environment_tags, git_tags
    from mnist_np.tracking.tracker import MlflowTracker
    from mnist_np.tracking.uris import tracking_uri_or_default

    tracker = MlflowTracker(tracking_uri_or_default(tracking_uri), "benchmarks")
    metrics: dict[str, float] = {}
    params: dict[str, str] = {"benchmark": result["benchmark"]}
    if result["benchmark"] == "loop":
        params.update(threads=str(result["threads"]))
        metrics["gemm_peak_gflops"] = result["gemm_peak_gflops"]
        for r in result["rows"]:
            key = f"bs{r['batch_size']}" if r["name"].startswith("default") else "seed_baseline"
            for name in ("ours_s", "ours_over_bound", "ours_over_torch", "torch_s"):
                if r.get(name) is not None:
                    metrics[f"{key}.{name}"] = r[name]
        a = result["augment"]
        params["augment"] = a["augment"]
        metrics.update({"best_mnist.ours_s": a["plain_s"], "best_mnist_augmented.ours_s": a["augmented_s"],
                        "best_mnist_augmented.overhead": a["overhead"]})
    elif result["benchmark"] == "run":
        metrics.update({f"median.{k}": v for k, v in result["median"].items()})
    else:
        params_sweep, metrics_sweep = bench_sweeps.tracked(result)
        params.update(params_sweep)
        metrics.update(metrics_sweep)
    tracker.start(f"bench-{result['benchmark']}", params, {**environment_tags(), **git_tags()})
    tracker.log_metrics(metrics)
    tracker.end("FINISHED")
    print(f"recorded in MLflow: experiment benchmarks, run {tracker.run_id}")


def main() -> None:
    # Here, not at the top: `contention --code` children import this module (time_torch) with another
    # checkout's mnist_np first on the path, which may predate what bench_steps imports.
    import bench_steps  # beside this file: a step with every shard in the caller

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    lp = sub.add_parser("loop", help="the training loop per epoch against the roofline and PyTorch")
    lp.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    lp.add_argument("--repeats", type=int, default=5,
                    help="rounds per case, each timing two epochs after a warm-up epoch")
    lp.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    lp.add_argument("--no-torch", action="store_true")
    lp.add_argument("--augment", default=None,
                    help="the augmentation the best preset is timed with and without (default: its own)")
    lp.add_argument("--augment-only", action="store_true",
                    help="only that row (best preset with and without augmentation)")
    lp.add_argument("--json", type=Path, default=ROOT / "outputs" / "bench-loop.json")
    p, q = bench_sweeps.add_parsers(sub, ROOT / "outputs")
    c, w = bench_contention.add_parsers(sub, ROOT / "outputs")
    st = bench_steps.add_parser(sub, ROOT / "outputs")
    r = sub.add_parser("run", help="whole default runs: time outside the epochs and peak memory")
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--speedups", action="store_true",
                   help="also time the run with each shortcut of mnist_np.speedups off in turn")
    r.add_argument("--with", dest="with_", action="append", default=[], metavar="KEY=VALUE",
                   help="also time the run with this override, e.g. mlflow.log_system_metrics=false (repeatable)")
    r.add_argument("--json", type=Path, default=ROOT / "outputs" / "bench-run.json")
    r.add_argument("overrides", nargs="*", help="Hydra overrides for the runs (default: none, the default config)")
    for sp in (lp, p, q, r):
        sp.add_argument("--track", action="store_true",
                        help="also record the results in the MLflow experiment `benchmarks`")
        sp.add_argument("--tracking-uri", default=None, help="store for --track (default: as for training)")
    for sp in (lp, p, q, r, c, w, st):
        sp.add_argument("--record", action="store_true", help=f"also merge the figures the docs quote into "
                        f"{figures.RECORD} (today, this machine) and render the pages: scripts/figures.py")
    args = parser.parse_args()
    result = {"loop": bench_loop, "sweep": bench_sweeps.bench_sweep, "search": bench_sweeps.bench_search,
              "run": bench_run, "contention": bench_contention.bench_contention,
              "waits": bench_contention.bench_waits, "steps": bench_steps.bench_steps}[args.what](args)
    result["command"] = " ".join(["scripts/bench.py", *(a for a in sys.argv[1:] if a != "--record")])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    if getattr(args, "track", False):
        track(result, args.tracking_uri)
    if args.record:
        recorded = figures.record_result(result, result["command"])
        print(f"recorded in {figures.RECORD}: {', '.join(recorded)}")


if __name__ == "__main__":
    main()
