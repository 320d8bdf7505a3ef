"""Benchmarks of speed on a busy machine (``bench.py contention``) and of the waits between processes (``bench.py
waits``).

``contention`` times an epoch of the default run (784-128-10, batch 128) in
three variants -- the default (``trainer.threads`` unset: the run decides
from the cores it finds), ``trainer.threads=1``, and the same MLP and
optimizer in PyTorch with its own default threads -- and the default run
with ``augment=affine`` (default threads and ``trainer.threads=1``) under
each condition:

- ``alone``;
- ``taskset``: one core allowed (``taskset -c <first core>``);
- ``quota``: a CPU quota of one core, from a cgroup the benchmark makes for
  itself and removes (cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``;
  skipped, with the reason, where it cannot: not root, no cpu controller);
- ``neighbour``: a busy process pinned to the last allowed core;
- ``two at once``: two runs of the same variant started together.

Every measurement is a fresh process (so that an affinity mask or a cgroup
applies to it, as to a user's run), timed by the mean of its epochs 2-3 (the
first pays for start-up and the first augmented images). The conditions and
variants run in rounds, in reversed order every other round; the table gives
per condition the median over rounds of each variant's time and of each
round's ratios. ``--code DIR`` runs the variants from another checkout (the
code before a change: ``git worktree add /tmp/before HEAD``), with this
file's driver.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
CONDITIONS = ("alone", "taskset", "quota", "neighbour", "two at once")
VARIANTS = {  # name -> (driver kind, overrides)
    "default": ("ours", []),
    "threads=1": ("ours", ["trainer.threads=1"]),
    "torch": ("torch", []),
    "augmented default": ("ours", ["augment=affine"]),
    "augmented threads=1": ("ours", ["augment=affine", "trainer.threads=1"]),
}
CGROUP_NAME = f"mnist-np-bench-{os.getpid()}"


# ---------------------------------------------------------------------------- one measurement, in its own process

def drive(kind: str, overrides: list[str], epochs: int) -> dict:
    """In the child: one fit of ``epochs`` epochs (or PyTorch's), as a default run would pick its threads."""
    if kind == "torch":
        sys.path.insert(0, str(HERE.parent))
        import torch
        from bench import time_torch

        threads = torch.get_num_threads()  # PyTorch's own choice (it reads the affinity mask)
        times = time_torch(128, epochs, threads, [784, 128, 10], 55_000)
        return {"epochs": times, "threads": threads}
    import numpy as np
    from threadpoolctl import threadpool_limits

    try:  # this checkout's layout, or an older one's (--code)
        from mnist_np.experiment.config import builders
        from mnist_np.experiment.config.compose import compose
        from mnist_np.experiment.run.context import HydraContext, blas_threads
    except ImportError:
        from mnist_np.experiment import builders  # type: ignore[no-redef]
        from mnist_np.experiment.compose import compose  # type: ignore[no-redef]
        from mnist_np.experiment.context import HydraContext, blas_threads  # type: ignore[no-redef]
    from mnist_np.train.loop import TrainSettings, fit

    cfg = compose([*overrides, "trainer.progress=false", f"trainer.epochs={epochs}"])
    threads = blas_threads(cfg, HydraContext())  # what a run of this config decides here
    _, sp = builders.load_splits(cfg)
    rngs = builders.rng_streams(cfg.seed)
    model = builders.build_model(cfg, rngs["init"], np.dtype(cfg.trainer.dtype))
    settings = TrainSettings(epochs=epochs, batch_size=cfg.trainer.batch_size,
                             eval_batch_size=cfg.trainer.eval_batch_size, threads=threads)
    with threadpool_limits(limits=threads, user_api="blas"):
        result = fit(model, builders.build_optimizer(cfg), builders.build_schedule(cfg), sp.x_train, sp.y_train,
                     sp.x_val, sp.y_val, settings, rngs["shuffle"], rngs["dropout"],
                     augmentation=builders.build_augmentation(cfg), augment_rng=rngs["augment"])
    return {"epochs": [h["epoch_seconds"] for h in result.history], "threads": threads}


def child_command(variant: str, epochs: int) -> list[str]:
    kind, overrides = VARIANTS[variant]
    return [sys.executable, str(HERE), "--child", kind, "--epochs", str(epochs), "--", *overrides]


def child_env(code: Path) -> dict[str, str]:
    return {**os.environ,
            "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"a measurement failed ({proc.args}):\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["epoch_s"] = statistics.mean(result["epochs"][1:])  # epochs 2..: the first pays for start-up
    return result


# ---------------------------------------------------------------------------- conditions

def first_and_last_core() -> tuple[int, int]:
    cores = sorted(os.sched_getaffinity(0))
    return cores[0], cores[-1]


class QuotaCgroup:
    """A cgroup of this benchmark's own with a CPU quota of one core (v2 ``cpu.max`` or v1 CFS); removed by
    :meth:`remove`."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.reason = ""
        try:
            self.path = self._make()
        except OSError as e:
            self.reason = f"no cgroup could be made: {e}"

    def _make(self) -> Path | None:
        if os.geteuid() != 0:
            self.reason = "not root: no cgroup can be made here"
            return None
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        for line in mounts:
            left, _, right = line.partition(" - ")
            fstype, options = right.split()[0], right.split()[2].split(",")
            mount = Path(left.split()[4])
            if fstype == "cgroup" and "cpu" in options:
                path = mount / CGROUP_NAME
                path.mkdir()
                (path / "cpu.cfs_period_us").write_text("100000")
                (path / "cpu.cfs_quota_us").write_text("100000")
                return path
            if fstype == "cgroup2" and "cpu" in (mount / "cgroup.controllers").read_text().split():
                if "cpu" not in (mount / "cgroup.subtree_control").read_text().split():
                    (mount / "cgroup.subtree_control").write_text("+cpu")
                path = mount / CGROUP_NAME
                path.mkdir()
                (path / "cpu.max").write_text("100000 100000")
                return path
        self.reason = "no cgroup hierarchy with the cpu controller is mounted"
        return None

    def wrap(self, command: list[str]) -> list[str]:
        """``command`` started inside the cgroup."""
        assert self.path is not None
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.path), *command]

    def remove(self) -> None:
        if self.path is not None and self.path.exists():
            for _ in range(50):  # the processes just ended may take a moment to leave it
                try:
                    self.path.rmdir()
                    return
                except OSError:
                    time.sleep(0.1)


def measure(condition: str, variant: str, code: Path, epochs: int, cgroup: QuotaCgroup) -> list[dict]:
    """One measurement of ``variant`` under ``condition``: one result, or two for ``two at once``."""
    command, env = child_command(variant, epochs), child_env(code)
    spawn = lambda cmd: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # noqa: E731
    first, last = first_and_last_core()
    if condition == "alone":
        return [finish(spawn(command))]
    if condition == "taskset":
        return [finish(spawn(["taskset", "-c", str(first), *command]))]
    if condition == "quota":
        return [finish(spawn(cgroup.wrap(command)))]
    if condition == "two at once":
        procs = [spawn(command), spawn(command)]
        return [finish(p) for p in procs]
    if condition == "neighbour":
        hog = subprocess.Popen(["taskset", "-c", str(last), sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.2)
            return [finish(spawn(command))]
        finally:
            hog.kill()
            hog.wait()
    raise ValueError(condition)


# ---------------------------------------------------------------------------- the benchmark

def bench_contention(args: argparse.Namespace) -> dict:
    """``args.repeats`` rounds of every condition and variant; medians and per-round ratios per condition."""
    code = Path(args.code).resolve() if args.code else ROOT
    conditions = [c for c in CONDITIONS if c in args.conditions]
    variants = [v for v in VARIANTS if v in args.variants]
    cgroup = QuotaCgroup() if "quota" in conditions else None
    skipped = {}
    if cgroup is not None and cgroup.path is None:
        skipped["quota"] = cgroup.reason
        conditions.remove("quota")
    if shutil.which("taskset") is None:
        skipped.update({c: "taskset is not installed" for c in ("taskset", "neighbour") if c in conditions})
        conditions = [c for c in conditions if c not in skipped]
    if "torch" in variants:
        try:
            import torch  # noqa: F401
        except ImportError:
            variants.remove("torch")
            skipped["torch"] = "PyTorch is not installed (pip install -e '.[bench]')"
    times: dict[str, dict[str, list[float]]] = {c: {v: [] for v in variants} for c in conditions}
    threads: dict[str, dict[str, int]] = {c: {} for c in conditions}
    pairs = [(c, v) for c in conditions for v in variants]
    try:
        for r in range(args.repeats):
            for condition, variant in pairs if r % 2 == 0 else pairs[::-1]:
                results = measure(condition, variant, code, args.epochs, cgroup)  # type: ignore[arg-type]
                times[condition][variant].append(statistics.mean(x["epoch_s"] for x in results))
                threads[condition][variant] = results[0]["threads"]
                print(f"  round {r + 1}/{args.repeats} {condition:12s} {variant:20s} "
                      f"{times[condition][variant][-1]:.3f} s/epoch ({results[0]['threads']} thread(s))", flush=True)
    finally:
        if cgroup is not None:
            cgroup.remove()
    rows = [summarise(c, times[c], threads[c]) for c in conditions]
    result = {"benchmark": "contention", "code": str(code), "repeats": args.repeats, "epochs": args.epochs,
              "rows": rows, "skipped": skipped, "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))}
    print_table(result)
    return result


def summarise(condition: str, times: dict[str, list[float]], threads: dict[str, int]) -> dict:
    med = statistics.median
    row: dict = {"condition": condition, "threads": threads, "all": times}
    row.update({v: med(t) for v, t in times.items() if t})

    def ratio(a: str, b: str) -> float | None:
        if a in times and b in times and times[a] and times[b]:
            return med(x / y for x, y in zip(times[a], times[b]))
        return None

    row["default/threads=1"] = ratio("default", "threads=1")
    row["default/torch"] = ratio("default", "torch")
    row["augmented default/threads=1"] = ratio("augmented default", "augmented threads=1")
    return row


COLUMNS = {  # key -> header
    "default": "default s", "threads=1": "threads=1 s", "torch": "torch s", "default/threads=1": "def/thr1",
    "default/torch": "def/torch", "augmented default": "aug def s", "augmented threads=1": "aug thr1 s",
    "augmented default/threads=1": "aug def/thr1",
}


def print_table(result: dict) -> None:
    print()
    print(f"code: {result['code']}; medians of {result['repeats']} rounds (s/epoch, epochs 2-{result['epochs']}); "
          "ratios: medians of each round's ratio")
    print(f"{'condition':14s}" + "".join(f"{h:>13s}" for h in COLUMNS.values()) + "   threads")
    for row in result["rows"]:
        cells = [f"{row[c]:13.3f}" if row.get(c) is not None else f"{'-':>13s}" for c in COLUMNS]
        print(f"{row['condition']:14s}" + "".join(cells) + "   "
              + ", ".join(f"{k} {v}" for k, v in row["threads"].items()))
    for what, why in result["skipped"].items():
        print(f"skipped {what}: {why}")


# ---------------------------------------------------------------------------- waits

def _pingpong(make, ring, wait, rounds: int) -> float:
    """Microseconds per round trip: this process rings ``a`` and waits for ``b``; a forked child the other way."""
    a, b = make(), make()
    pid = os.fork()
    if pid == 0:
        try:
            for _ in range(rounds):
                wait(a)
                ring(b)
        finally:
            os._exit(0)
    start = time.perf_counter()
    for _ in range(rounds):
        ring(a)
        wait(b)
    seconds = time.perf_counter() - start
    os.waitpid(pid, 0)
    return seconds / rounds * 1e6


def _per_call(call, n: int = 100_000) -> float:
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n * 1e6


def bench_waits(args: argparse.Namespace) -> dict:
    """The candidates for a wait between processes: the cost of a ring, of a try, of a round trip, of a long sleep."""
    import multiprocessing
    import resource

    from mnist_np.common.waits import SPIN_SECONDS, Doorbell

    fork = multiprocessing.get_context("fork")
    semaphore = fork.Semaphore(0)
    event = os.eventfd(0, os.EFD_SEMAPHORE | os.EFD_NONBLOCK)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    costs = {
        "semaphore ring (nobody asleep)": _per_call(semaphore.release),
        "semaphore try (succeeds)": _per_call(lambda: semaphore.acquire(False)),
        "semaphore try (fails)": _per_call(lambda: semaphore.acquire(False)),
        "eventfd write": _per_call(lambda: os.eventfd_write(event, 1)),
        "pipe write (1 byte)": _per_call(lambda: os.write(write_end, b"1"), 10_000),
    }
    for fd in (event, read_end, write_end):
        os.close(fd)
    sleeping = {  # both sides sleep in the kernel at every wait
        "semaphore": (lambda: fork.Semaphore(0), lambda s: s.release(), lambda s: s.acquire()),
        "eventfd": (lambda: os.eventfd(0, os.EFD_SEMAPHORE), lambda f: os.eventfd_write(f, 1), os.eventfd_read),
        "pipe": (os.pipe, lambda p: os.write(p[1], b"1"), lambda p: os.read(p[0], 1)),
        "doorbell (spin, then sleep)": (Doorbell, Doorbell.ring, Doorbell.wait),
    }
    trips: dict[str, list[float]] = {name: [] for name in sleeping}
    for _ in range(args.repeats):
        for name, (make, ring, wait) in sleeping.items():
            trips[name].append(_pingpong(make, ring, wait, args.rounds))
    # A long wait: the waiter's CPU time, from the kernel's accounting of a reaped child.
    bell = Doorbell()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    pid = os.fork()
    if pid == 0:
        try:
            bell.wait()
        finally:
            os._exit(0)
    time.sleep(args.long_wait)
    bell.ring()
    os.waitpid(pid, 0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = {"benchmark": "waits", "per_call_us": costs,
              "round_trip_us": {k: statistics.median(v) for k, v in trips.items()},
              "round_trips_all": trips, "spin_us": SPIN_SECONDS * 1e6, "long_wait_s": args.long_wait,
              "long_wait_cpu_s": cpu}
    print("per call (µs):")
    for name, us in costs.items():
        print(f"  {name:36s}{us:8.3f}")
    print(f"round trip between two processes (µs, median of {args.repeats} x {args.rounds}):")
    for name, us in result["round_trip_us"].items():
        print(f"  {name:36s}{us:8.1f}")
    print(f"a doorbell wait of {args.long_wait:.0f} s used {cpu * 1e3:.1f} ms of CPU "
          f"({100 * cpu / args.long_wait:.3f} %)")
    return result


def add_parsers(sub: argparse._SubParsersAction,
                outputs: Path) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    w = sub.add_parser("waits", help="the waits between processes: rings, tries, round trips, a long sleep's CPU")
    w.add_argument("--repeats", type=int, default=5)
    w.add_argument("--rounds", type=int, default=20_000, help="round trips per measurement")
    w.add_argument("--long-wait", type=float, default=5.0, help="seconds of the long wait whose CPU time is measured")
    w.add_argument("--json", type=Path, default=outputs / "bench-waits.json")
    return add_parser(sub, outputs), w


def add_parser(sub: argparse._SubParsersAction, outputs: Path) -> argparse.ArgumentParser:
    p = sub.add_parser("contention", help="the default run, threads=1 and PyTorch on a busy machine")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3, help="per measurement; timed by epochs 2..")
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--code", default=None, help="the checkout whose mnist_np is measured (default: this one)")
    p.add_argument("--json", type=Path, default=outputs / "bench-contention.json")
    return p


if __name__ == "__main__" and "--child" in sys.argv:
    cli = argparse.ArgumentParser()
    cli.add_argument("--child", choices=("ours", "torch"))
    cli.add_argument("--epochs", type=int, default=3)
    cli.add_argument("overrides", nargs="*")
    a = cli.parse_args()
    print(json.dumps(drive(a.child, a.overrides, a.epochs)))
