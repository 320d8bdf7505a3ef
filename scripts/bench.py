"""Benchmarks, measured side by side in one run and reported as medians and ratios.

    python scripts/bench.py loop                  # our training loop vs the GEMM roofline and PyTorch
    python scripts/bench.py sweep                 # parallel vs basic launcher, 4 members x 10 epochs
    python scripts/bench.py sweep --repeats 5 --members 4 --epochs 10 --json bench-sweep.json
    python scripts/bench.py sweep trainer.threads=1  # ... with single-threaded members in both
    python scripts/bench.py run                   # a whole default `make train` run: time outside the epochs, memory
    python scripts/bench.py loop --track          # ... and record the results as a run in the MLflow experiment `benchmarks`

``loop`` times the project's own training loop (``mnist_np.train.loop.fit``,
built from the config by a run's own builders, ``mnist_np.experiment.builders``) per epoch for each
batch size; measures this machine's float32 GEMM peak and so the FLOP lower
bound of an epoch; runs the same MLP in PyTorch with the same batch size and
thread count when torch is installed (``pip install torch==2.13.0``: never a
runtime dependency); and times the tutorial's float64 formulation
(``+experiment=seed_baseline``) for reference. The three are measured in
rounds, side by side, and the ratios taken per round: the machine's speed
drifts by a factor of two over minutes, and a ratio of neighbours does not.

``run`` runs the default training (``scripts/train.py``, the data already
cached, one store that exists after a first untimed run, as for a user's
second ``make train``) end to end as a subprocess, several times, and
reports its wall time,
the sum of its epoch times, the difference (start-up, data, evaluation,
MLflow, plots and the logged model), and the peak resident memory.

``sweep`` runs the same ``--multirun`` sweep (default config, ``seed=0..N-1``)
with Hydra's basic launcher and with ``+sweep=parallel`` (joblib, one worker
per core), alternating the two so that machine noise hits both alike, each
against a fresh SQLite store in a temp dir. It prints the wall times, their
medians and the speed-up, and writes them as JSON. The machine is shared and
noisy: compare the ratio, not the seconds. On Linux it also counts the CPU
seconds the whole machine spent during each sweep: a launcher can at best
spread the same work over every core, so the basic launcher's CPU seconds
bound what any parallel launcher can gain over it.
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

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "scripts" / "train.py"


def machine_cpu_seconds() -> float | None:
    """CPU seconds spent so far by the whole machine (all cores, busy states of ``/proc/stat``); None off Linux.

    Machine-wide because a sweep's work is spread over processes that are
    not all its children (loky's workers, their forkserver).
    """
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def time_sweep(extra: list[str], members: int, epochs: int, workdir: Path, speedups: str = "all") -> tuple[float, float | None]:
    """Wall seconds and machine CPU seconds of one ``--multirun`` sweep of ``members`` runs, from launch to exit."""
    store = workdir / "mlflow.db"
    cmd = [
        sys.executable, str(TRAIN), "--multirun", *extra,
        f"seed=range({members})", f"trainer.epochs={epochs}", "trainer.progress=false",
        f"mlflow.tracking_uri=sqlite:///{store}", "mlflow.experiment_name=bench-sweep",
        f"hydra.sweep.dir={workdir / 'sweep'}",
    ]
    cpu_before = machine_cpu_seconds()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MNIST_NP_SPEEDUPS": speedups})
    seconds = time.perf_counter() - start
    cpu_after = machine_cpu_seconds()
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    if proc.returncode != 0:
        summary = workdir / "sweep" / "sweep_summary" / "summary.md"
        detail = summary.read_text() if summary.exists() else proc.stderr[-2000:]
        raise SystemExit(f"sweep failed ({' '.join(extra) or 'basic'}):\n{detail}\n{proc.stdout[-3000:]}")
    return seconds, cpu


def bench_sweep(args: argparse.Namespace) -> dict:
    parallel = ["+sweep=parallel", f"hydra.launcher.n_jobs={args.jobs}", *args.overrides]
    variants = {"basic": ([*args.overrides], "all"), "parallel": (parallel, "all")}
    if args.speedups:  # the parallel launcher without the warm_workers shortcut
        variants["cold"] = (parallel, "-warm_workers")
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(args.repeats):
        for name, (extra, speedups) in variants.items():
            with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
                t, c = time_sweep(extra, args.members, args.epochs, Path(tmp), speedups)
            times[name].append(t)
            if c is not None:
                cpu[name].append(c)
            used = f"  {c:6.1f} CPU s ({c / t:.2f} cores busy)" if c is not None else ""
            print(f"  repeat {i + 1}/{args.repeats}  {name:8s} {t:7.2f} s{used}", flush=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu.items() if v}
    ratios = [b / p for b, p in zip(times["basic"], times["parallel"])]
    cores = os.cpu_count() or 1
    result = {
        "benchmark": "sweep",
        "members": args.members,
        "epochs": args.epochs,
        "overrides": args.overrides,
        "n_jobs": args.jobs,
        "cpu_count": cores,
        "platform": platform.platform(),
        "seconds": times,
        "median_seconds": medians,
        "cpu_seconds": cpu,
        "median_cpu_seconds": cpu_medians,
        "speedup_median_of_ratios": statistics.median(ratios),
        "speedup_ratio_of_medians": medians["basic"] / medians["parallel"],
    }
    print()
    print(f"{'launcher':10s} {'median s':>9s} {'CPU s':>7s}   all runs")
    for k in variants:
        c = f"{cpu_medians[k]:7.1f}" if k in cpu_medians else f"{'':7s}"
        print(f"{k:10s} {medians[k]:9.2f} {c}   {', '.join(f'{t:.2f}' for t in times[k])}")
    print(f"speed-up of +sweep=parallel (median of paired ratios): {result['speedup_median_of_ratios']:.2f}x")
    if "cold" in times:
        result["warm_workers_saves_s"] = statistics.median(c - w for c, w in zip(times["cold"], times["parallel"]))
        print(f"warm_workers saves {result['warm_workers_saves_s']:+.2f} s per parallel sweep (median of paired differences)")
    if "basic" in cpu_medians:
        # Even with every core busy all the time, the basic launcher's CPU work takes this long.
        bound = medians["basic"] / (cpu_medians["basic"] / cores)
        result["speedup_bound_at_basic_cpu"] = bound
        print(f"a sweep doing the basic launcher's CPU work on all {cores} cores at once would be {bound:.2f}x faster")
    return result


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
        from mnist_np.experiment.builders import load_splits
        from mnist_np.experiment.compose import compose

        self.cfg = compose([*overrides, "trainer.progress=false"])
        self.threads = threads
        _, self.splits = load_splits(self.cfg)

    def epochs(self, epochs: int) -> tuple[list[float], list[int]]:
        """Seconds of each epoch of one ``fit`` of ``epochs`` epochs, and the layer sizes."""
        import numpy as np
        from threadpoolctl import threadpool_limits

        from mnist_np.experiment.builders import build_model, build_optimizer, build_schedule, rng_streams
        from mnist_np.train.loop import TrainSettings, fit

        cfg, sp = self.cfg, self.splits
        rngs = rng_streams(cfg.seed)
        model = build_model(cfg, rngs["init"], np.dtype(cfg.trainer.dtype))
        settings = TrainSettings(epochs=epochs, batch_size=cfg.trainer.batch_size, eval_batch_size=cfg.trainer.eval_batch_size,
                                 threads=self.threads)
        with threadpool_limits(limits=self.threads, user_api="blas"):
            result = fit(model, build_optimizer(cfg), build_schedule(cfg), sp.x_train, sp.y_train, sp.x_val, sp.y_val,
                         settings, rngs["shuffle"], rngs["dropout"])
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


def bench_loop(args: argparse.Namespace) -> dict:
    """Per batch size, ``repeats`` rounds of: GEMM peak, our epoch, torch's epoch -- side by side.

    Each round measures all three within seconds of each other and takes
    the ratios of that round; the table gives medians over rounds. A fit (or
    torch run) of three epochs is timed by the mean of its last two: the
    first pays for start-up (worker processes, page faults, allocator).
    """
    import numpy as np
    from threadpoolctl import threadpool_info

    from mnist_np.experiment.schema import register_configs

    register_configs()
    threads = args.threads
    cases = [(f"default, batch {bs}", [f"trainer.batch_size={bs}"], True) for bs in args.batch_sizes]
    cases.append(("seed_baseline (float64, batch 64)", ["+experiment=seed_baseline"], False))
    rows = [loop_case(name, overrides, compare, args) for name, overrides, compare in cases]
    peaks_all = [p for r in rows for p in r["peaks"]]
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    from mnist_np.train.stepper import shard_count

    result = {
        "benchmark": "loop", "threads": threads, "repeats": args.repeats, "gemm_peak_gflops": statistics.median(peaks_all),
        "numpy": np.__version__,
        "blas": f"{blas[0].get('internal_api')} {blas[0].get('version')} ({blas[0].get('architecture')})" if blas else "?",
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "rows": rows,
        "shards": {bs: shard_count(bs, threads) for bs in args.batch_sizes},
    }
    print()
    print(f"float32 GEMM peak: {result['gemm_peak_gflops']:.0f} GFLOP/s with {threads} thread(s) (median of {len(peaks_all)}); "
          f"numpy {np.__version__}, {result['blas']}")
    print(f"medians of {args.repeats} rounds; ratios are medians of each round's ratio")
    print(f"{'':36s}{'ours s':>8s}{'bound s':>9s}{'ours/bound':>11s}{'torch s':>9s}{'ours/torch':>11s}")
    for r in rows:
        f = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
        print(f"{r['name']:36s}{r['ours_s']:8.3f}{f(r['bound_s'], '9.3f'):>9s}{f(r['ours_over_bound'], '11.2f'):>11s}"
              f"{f(r['torch_s'], '9.3f'):>9s}{f(r['ours_over_torch'], '11.2f'):>11s}")
    return result


def time_run(store: Path, overrides: list[str], speedups: str) -> dict:
    """One default run as a subprocess (``MNIST_NP_SPEEDUPS=speedups``): wall, epoch and outside seconds, peak memory."""
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, str(TRAIN), "trainer.progress=false", f"mlflow.tracking_uri=sqlite:///{store / 'mlflow.db'}",
               f"hydra.run.dir={out}", *overrides]
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
    median over repeats of (its variant's time outside the epochs - the default's).
    """
    from mnist_np.speedups import NAMES

    variants = {"default": "all"}
    if args.speedups:
        variants.update({f"without {name}": f"-{name}" for name in NAMES if name != "warm_workers"})
    rows: dict[str, list[dict]] = {k: [] for k in variants}
    store = Path(tempfile.mkdtemp(prefix="bench-run-"))
    time_run(store, args.overrides, "all")  # creates the store and fills the data and font caches: not timed
    for i in range(args.repeats):
        for name, value in variants.items():
            row = time_run(store, args.overrides, value)
            rows[name].append(row)
            print(f"  run {i + 1}/{args.repeats} {name:32s} wall {row['wall_s']:.2f} s, epochs {row['epochs_s']:.2f} s, "
                  f"outside {row['outside_epochs_s']:.2f} s, peak {row['peak_rss_gb']:.2f} GB", flush=True)
    shutil.rmtree(store, ignore_errors=True)
    keys = ("wall_s", "epochs_s", "outside_epochs_s", "peak_rss_gb")
    medians = {name: {k: statistics.median(r[k] for r in runs) for k in keys} for name, runs in rows.items()}
    med = medians["default"]
    print(f"median: wall {med['wall_s']:.2f} s = epochs {med['epochs_s']:.2f} s + outside {med['outside_epochs_s']:.2f} s; "
          f"peak resident memory {med['peak_rss_gb']:.2f} GB")
    # The shortcuts act outside the epochs, so their time is compared there: the epochs' own
    # noise (a second either way on a shared machine) stays out of the differences.
    saved = {name.removeprefix("without "): statistics.median(r["outside_epochs_s"] - d["outside_epochs_s"]
                                                              for r, d in zip(runs, rows["default"]))
             for name, runs in rows.items() if name != "default"}
    for name, seconds in saved.items():
        print(f"  {name:24s} saves {seconds:+.2f} s outside the epochs (median of paired differences; "
              f"wall medians {medians['without ' + name]['wall_s']:.2f} s without it, {med['wall_s']:.2f} s with)")
    return {"benchmark": "run", "overrides": args.overrides, "runs": rows["default"], "median": med, "variants": rows,
            "variant_medians": medians, "speedup_saves_s": saved, "platform": platform.platform(), "cpu_count": os.cpu_count()}


def track(result: dict, tracking_uri: str | None) -> None:
    """Record a benchmark's figures as a run in the MLflow experiment ``benchmarks``."""
    from mnist_np.experiment.provenance import environment_tags, git_tags
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
    elif result["benchmark"] == "run":
        metrics.update({f"median.{k}": v for k, v in result["median"].items()})
    else:
        params.update(members=str(result["members"]), epochs=str(result["epochs"]), n_jobs=str(result["n_jobs"]),
                      overrides=" ".join(result["overrides"]))
        metrics.update(speedup=result["speedup_median_of_ratios"], **{f"median_s.{k}": v for k, v in result["median_seconds"].items()},
                       **{f"median_cpu_s.{k}": v for k, v in result["median_cpu_seconds"].items()})
        if "speedup_bound_at_basic_cpu" in result:
            metrics["speedup_bound_at_basic_cpu"] = result["speedup_bound_at_basic_cpu"]
    tracker.start(f"bench-{result['benchmark']}", params, {**environment_tags(), **git_tags()})
    tracker.log_metrics(metrics)
    tracker.end("FINISHED")
    print(f"recorded in MLflow: experiment benchmarks, run {tracker.run_id}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    lp = sub.add_parser("loop", help="the training loop per epoch against the roofline and PyTorch")
    lp.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    lp.add_argument("--repeats", type=int, default=5, help="rounds per case, each timing two epochs after a warm-up epoch")
    lp.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    lp.add_argument("--no-torch", action="store_true")
    lp.add_argument("--json", type=Path, default=ROOT / "outputs" / "bench-loop.json")
    p = sub.add_parser("sweep", help="a parallel (joblib) sweep against the basic launcher")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="joblib workers (default: one per core)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--speedups", action="store_true", help="also time the parallel sweep without the warm_workers shortcut")
    p.add_argument("--json", type=Path, default=ROOT / "outputs" / "bench-sweep.json")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for both sweeps' members (e.g. trainer.threads=1)")
    r = sub.add_parser("run", help="whole default runs: time outside the epochs and peak memory")
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--speedups", action="store_true", help="also time the run with each shortcut of mnist_np.speedups off in turn")
    r.add_argument("--json", type=Path, default=ROOT / "outputs" / "bench-run.json")
    r.add_argument("overrides", nargs="*", help="Hydra overrides for the runs (default: none, the default config)")
    for sp in (lp, p, r):
        sp.add_argument("--track", action="store_true", help="also record the results in the MLflow experiment `benchmarks`")
        sp.add_argument("--tracking-uri", default=None, help="store for --track (default: as for training)")
    args = parser.parse_args()
    result = {"loop": bench_loop, "sweep": bench_sweep, "run": bench_run}[args.what](args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    if args.track:
        track(result, args.tracking_uri)


if __name__ == "__main__":
    main()
