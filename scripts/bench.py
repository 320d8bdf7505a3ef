"""Benchmarks, measured side by side in one run and reported as medians and ratios.

    python scripts/bench.py sweep                 # parallel vs basic launcher, 4 members x 10 epochs
    python scripts/bench.py sweep --repeats 5 --members 4 --epochs 10 --json bench-sweep.json

``sweep`` runs the same ``--multirun`` sweep (default config, ``seed=0..N-1``)
with Hydra's basic launcher and with ``+sweep=parallel`` (joblib, one worker
per core), alternating the two so that machine noise hits both alike, each
against a fresh SQLite store in a temp dir. It prints the wall times, their
medians and the speed-up, and writes them as JSON. The machine is shared and
noisy: compare the ratio, not the seconds.
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

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "scripts" / "train.py"


def time_sweep(extra: list[str], members: int, epochs: int, workdir: Path) -> float:
    """Wall seconds of one ``--multirun`` sweep of ``members`` default runs, from launch to exit."""
    store = workdir / "mlflow.db"
    cmd = [
        sys.executable, str(TRAIN), "--multirun", *extra,
        f"seed=range({members})", f"trainer.epochs={epochs}", "trainer.progress=false",
        f"mlflow.tracking_uri=sqlite:///{store}", "mlflow.experiment_name=bench-sweep",
        f"hydra.sweep.dir={workdir / 'sweep'}",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        summary = workdir / "sweep" / "sweep_summary" / "summary.md"
        detail = summary.read_text() if summary.exists() else proc.stderr[-2000:]
        raise SystemExit(f"sweep failed ({' '.join(extra) or 'basic'}):\n{detail}\n{proc.stdout[-3000:]}")
    return seconds


def bench_sweep(args: argparse.Namespace) -> dict:
    variants = {"basic": [], "parallel": ["+sweep=parallel", f"hydra.launcher.n_jobs={args.jobs}"]}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(args.repeats):
        for name, extra in variants.items():
            with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
                t = time_sweep(extra, args.members, args.epochs, Path(tmp))
            times[name].append(t)
            print(f"  repeat {i + 1}/{args.repeats}  {name:8s} {t:7.2f} s", flush=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    ratios = [b / p for b, p in zip(times["basic"], times["parallel"])]
    result = {
        "benchmark": "sweep",
        "members": args.members,
        "epochs": args.epochs,
        "n_jobs": args.jobs,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "seconds": times,
        "median_seconds": medians,
        "speedup_median_of_ratios": statistics.median(ratios),
        "speedup_ratio_of_medians": medians["basic"] / medians["parallel"],
    }
    print()
    print(f"{'launcher':10s} {'median s':>9s}   all runs")
    for k in variants:
        print(f"{k:10s} {medians[k]:9.2f}   {', '.join(f'{t:.2f}' for t in times[k])}")
    print(f"speed-up of +sweep=parallel (median of paired ratios): {result['speedup_median_of_ratios']:.2f}x")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("sweep", help="a parallel (joblib) sweep against the basic launcher")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="joblib workers (default: one per core)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=ROOT / "outputs" / "bench-sweep.json")
    args = parser.parse_args()
    result = bench_sweep(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
