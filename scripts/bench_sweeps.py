"""The sweep benchmarks of ``scripts/bench.py``: whole ``--multirun`` sweeps, timed side by side.

``sweep`` runs the same ``--multirun`` sweep (default config, ``seed=0..N-1``)
with Hydra's basic launcher and with ``+sweep=parallel`` (joblib, one worker
per core), alternating the two so that machine noise hits both alike, each
against a fresh SQLite store in a temp dir. It prints the wall times, their
medians and the speed-up, and writes them as JSON. The machine is shared and
noisy: compare the ratio, not the seconds. On Linux it also counts the CPU
seconds the whole machine spent during each sweep: a launcher can at best
spread the same work over every core, so the basic launcher's CPU seconds
bound what any parallel launcher can gain over it.

``search`` runs the same guided search (``+sweep=optuna``: same seed, same
``n_trials``, members of up to ``--epochs`` epochs on the full data; one seed
per round, a new one each round) without
a pruner and with each of ``--pruner`` (``hyperband`` and
``successive_halving`` by default), alternated, each against
fresh stores, and reports each one's total epochs trained, wall time and
best validation accuracy, read from the members' own ``summary.json``.

``search --jobs N`` runs the same pruned search (one ``--pruner``,
successive halving by default) with N workers
(``+sweep=[optuna,parallel]``) twice per round, alternated: batch-synchronous
(``hydra.sweeper.asynchronous=false``: N trials asked, all told before the
next N) and asynchronous (each worker asks for its next trial when its last
one ends). Besides the wall time and the best validation accuracy it reports
the ``workers_busy_fraction`` that each search's parent logged, the same way
for both: the members' wall times (from the moment a worker took the member
-- asked for it, or launched its batch -- to its run's end) over N x the
time from the first member's start to the last one's end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "scripts" / "train.py"
SEARCH_PRUNERS = ("hyperband", "successive_halving")  # `search` without --pruner: each against the unpruned search


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


def time_sweep(extra: list[str], members: int, epochs: int, workdir: Path,
               speedups: str = "all") -> tuple[float, float | None]:
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
        print(f"warm_workers saves {result['warm_workers_saves_s']:+.2f} s per parallel sweep (median "
              "of paired differences)")
    if "basic" in cpu_medians:
        # Even with every core busy all the time, the basic launcher's CPU work takes this long.
        bound = medians["basic"] / (cpu_medians["basic"] / cores)
        result["speedup_bound_at_basic_cpu"] = bound
        print(f"a sweep doing the basic launcher's CPU work on all {cores} cores at once would be {bound:.2f}x faster")
    return result


def time_search(args: argparse.Namespace, pruner: str | None, seed: int, workdir: Path,
                workers: list[str] | None = None) -> dict[str, Any]:
    """One guided search as a subprocess: wall seconds, epochs its members trained, best validation accuracy, trials
    pruned. ``workers``: the overrides that run it with parallel workers (then ``busy_fraction`` too)."""
    cmd = [
        sys.executable, str(TRAIN), "--multirun", "+sweep=[optuna,parallel]" if workers else "+sweep=optuna",
        *(workers or []), f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.seed={seed}", f"hydra.sweeper.pruner={pruner or 'null'}", f"trainer.epochs={args.epochs}",
        f"hydra.sweeper.storage=sqlite:///{workdir / 'optuna.db'}",
        f"mlflow.tracking_uri=sqlite:///{workdir / 'mlflow.db'}",
        "mlflow.experiment_name=bench-search", "mlflow.log_plots=false", "trainer.progress=false",
        f"hydra.sweep.dir={workdir / 'sweep'}", *args.overrides,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    summaries = [json.loads(p.read_text()) for p in sorted((workdir / "sweep").glob("*/summary.json"))]
    if proc.returncode not in (0, 1) or not summaries:
        raise SystemExit(f"search failed ({pruner}):\n{proc.stderr[-3000:]}")
    return {
        "seconds": seconds,
        "epochs": sum(int(s["metrics"]["epochs_trained"]) for s in summaries),
        "best_val_accuracy": max(s["metrics"]["best_val_accuracy"] for s in summaries),
        "pruned": sum(1 for s in summaries if s.get("pruned_at_epoch")),
        "finished": len(summaries),
        **({"busy_fraction": logged_busy_fraction(workdir / "mlflow.db")} if workers else {}),
    }


def logged_busy_fraction(store: Path) -> float | None:
    """The ``workers_busy_fraction`` that the parent of the one sweep in ``store`` logged."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return next((r.data.metrics["workers_busy_fraction"] for r in runs if "workers_busy_fraction" in r.data.metrics),
                None)


def search_variants(pruners: list[str] | None) -> dict[str, str | None]:
    """The searches of a round, by name: the unpruned one, then one per pruner (default: :data:`SEARCH_PRUNERS`)."""
    return {"unpruned": None, **{p: p for p in (pruners or SEARCH_PRUNERS)}}


def bench_search(args: argparse.Namespace) -> dict[str, Any]:
    """Each round runs the unpruned search and one search per pruner, in an order that alternates between rounds.

    Within a round every search has the same sampler seed; round ``i`` uses
    seed ``--seed + i``. A seeded search is deterministic on one machine, so
    rounds with one seed would repeat the same epochs and accuracies and
    only time the noise; different seeds make the medians mean something.
    """
    if args.jobs > 1:
        return bench_search_workers(args)
    variants = search_variants(args.pruner)
    args.pruner = [p for p in variants.values() if p is not None]
    rows = search_rounds(args, {k: (v, None) for k, v in variants.items()})
    full = rows["unpruned"]
    result: dict[str, Any] = {
        "benchmark": "search", "trials": args.trials, "epochs": args.epochs, "seed": args.seed, "pruners": args.pruner,
        "overrides": args.overrides, "platform": platform.platform(), "cpu_count": os.cpu_count(), "runs": rows,
        "paired": {},
    }
    print()
    print_medians(rows)
    for pruner in args.pruner:
        pruned = rows[pruner]
        paired = {
            "median_epoch_fraction": statistics.median(p["epochs"] / f["epochs"] for p, f in zip(pruned, full)),
            "median_val_accuracy_gap_pp": statistics.median(100 * (f["best_val_accuracy"] - p["best_val_accuracy"])
                                                            for p, f in zip(pruned, full)),
            "median_time_ratio": statistics.median(p["seconds"] / f["seconds"] for p, f in zip(pruned, full)),
        }
        result["paired"][pruner] = paired
        print(f"{pruner} trains {100 * paired['median_epoch_fraction']:.0f}% of the epochs in "
              f"{100 * paired['median_time_ratio']:.0f}% of the time; its best val_accuracy is "
              f"{paired['median_val_accuracy_gap_pp']:+.2f} points below the unpruned search's "
              "(medians of paired runs)")
    return result


def bench_search_workers(args: argparse.Namespace) -> dict[str, Any]:
    """``search --jobs N``: the batch-synchronous and the asynchronous search, same seeds and pruner, alternated."""
    if args.pruner is not None and len(args.pruner) != 1:
        raise SystemExit("error: search --jobs compares two searches with the same pruner: give one --pruner")
    pruner = (args.pruner or ["successive_halving"])[0]
    workers = [f"hydra.sweeper.n_jobs={args.jobs}"]
    rows = search_rounds(args, {"batch": (pruner, [*workers, "hydra.sweeper.asynchronous=false"]),
                                "async": (pruner, [*workers, "hydra.sweeper.asynchronous=true"])})
    batch, asynchronous = rows["batch"], rows["async"]
    paired = {
        "median_time_ratio": statistics.median(a["seconds"] / b["seconds"] for a, b in zip(asynchronous, batch)),
        "median_val_accuracy_gap_pp": statistics.median(100 * (b["best_val_accuracy"] - a["best_val_accuracy"])
                                                        for a, b in zip(asynchronous, batch)),
        "median_busy_fraction": {k: statistics.median(r["busy_fraction"] or 0.0 for r in v) for k, v in rows.items()},
    }
    print()
    print_medians(rows)
    busy = paired["median_busy_fraction"]
    print(f"with {args.jobs} workers and {pruner}: the asynchronous search keeps them {busy['async']:.2f} busy "
          f"(batches: {busy['batch']:.2f}), takes {100 * paired['median_time_ratio']:.0f}% of the batch-synchronous "
          f"search's time; its best val_accuracy is {paired['median_val_accuracy_gap_pp']:+.2f} points below "
          "(medians of paired runs)")
    return {
        "benchmark": "search", "trials": args.trials, "epochs": args.epochs, "seed": args.seed, "pruners": [pruner],
        "jobs": args.jobs, "overrides": args.overrides, "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "runs": rows, "paired": {"async": paired},
    }


def search_rounds(args: argparse.Namespace,
                  variants: dict[str, tuple[str | None, list[str] | None]]) -> dict[str, list[dict[str, Any]]]:
    """``--repeats`` rounds of one search per variant (name: pruner, worker overrides), the order alternated."""
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
    for i in range(args.repeats):
        for name, (pruner, workers) in (list(variants.items()) if i % 2 == 0 else list(reversed(variants.items()))):
            with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
                row = time_search(args, pruner, args.seed + i, Path(tmp), workers)
            rows[name].append({"seed": args.seed + i, **row})
            print(f"  round {i + 1}/{args.repeats} seed {args.seed + i}  {name:18s} {row['seconds']:7.1f} s  "
                  f"{row['epochs']:4d} epochs  best val_accuracy {row['best_val_accuracy']:.4f}  pruned "
                  f"{row['pruned']}/{row['finished']}"
                  + (f"  busy {row['busy_fraction']:.2f}" if row.get("busy_fraction") is not None else ""), flush=True)
    return rows


def print_medians(rows: dict[str, list[dict[str, Any]]]) -> None:
    for name, runs in rows.items():
        print(f"{name:18s} median {statistics.median(r['seconds'] for r in runs):7.1f} s, "
              f"{statistics.median(r['epochs'] for r in runs):6.1f} epochs, "
              f"best val_accuracy {statistics.median(r['best_val_accuracy'] for r in runs):.4f}")


def tracked(result: dict[str, Any]) -> tuple[dict[str, str], dict[str, float]]:
    """A sweep or search benchmark's params and metrics for ``bench.py --track``."""
    if result["benchmark"] == "search":
        params = {k: str(result[k]) for k in ("trials", "epochs", "seed")} | {"pruners": ",".join(result["pruners"])}
        if "jobs" in result:
            params["jobs"] = str(result["jobs"])
        return params, {f"{k}.{name}" + (f".{sub}" if sub else ""): value
                        for name, paired in result["paired"].items() for k, v in paired.items()
                        for sub, value in (v.items() if isinstance(v, dict) else [(None, v)])}
    params = dict(members=str(result["members"]), epochs=str(result["epochs"]), n_jobs=str(result["n_jobs"]),
                  overrides=" ".join(result["overrides"]))
    metrics = dict(speedup=result["speedup_median_of_ratios"],
                   **{f"median_s.{k}": v for k, v in result["median_seconds"].items()},
                   **{f"median_cpu_s.{k}": v for k, v in result["median_cpu_seconds"].items()})
    if "speedup_bound_at_basic_cpu" in result:
        metrics["speedup_bound_at_basic_cpu"] = result["speedup_bound_at_basic_cpu"]
    return params, metrics


def add_parsers(sub: Any, outputs: Path) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """``bench.py sweep`` and ``bench.py search``."""
    p = sub.add_parser("sweep", help="a parallel (joblib) sweep against the basic launcher")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="joblib workers (default: one per core)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--speedups", action="store_true",
                   help="also time the parallel sweep without the warm_workers shortcut")
    p.add_argument("--json", type=Path, default=outputs / "bench-sweep.json")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for both sweeps' members (e.g. trainer.threads=1)")
    q = sub.add_parser("search", help="the same guided search with and without a pruner")
    q.add_argument("--trials", type=int, default=24)
    q.add_argument("--epochs", type=int, default=10, help="the members' trainer.epochs (the pruner's full budget)")
    q.add_argument("--seed", type=int, default=0, help="the sampler's seed in the first round (then +1 per round)")
    q.add_argument("--pruner", nargs="+", default=None, choices=("median", "hyperband", "successive_halving"),
                   help="each is paired with the same unpruned search (default: hyperband successive_halving); "
                        "with --jobs, the one pruner of both searches (default: successive_halving)")
    q.add_argument("--jobs", type=int, default=1,
                   help="N > 1: the batch-synchronous against the asynchronous search, each with N workers")
    q.add_argument("--repeats", type=int, default=3, help="rounds of searches, their order alternated")
    q.add_argument("--json", type=Path, default=outputs / "bench-search.json")
    q.add_argument("overrides", nargs="*",
                   help="Hydra overrides for both searches (e.g. hydra.sweeper.reduction_factor=2)")
    return p, q
