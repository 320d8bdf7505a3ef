"""Speed that holds on a busy machine, without changing a bit: doorbells that sleep, the pace of shard processes.

CPU use is measured with ``resource.getrusage`` on reaped child processes
(the kernel's accounting), never by timing.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from mnist_np.common.waits import Doorbell
from mnist_np.nn.model import MLP
from mnist_np.nn.optim import SGD, Adam
from mnist_np.nn.registry import ACTIVATIONS, INITIALIZERS
from mnist_np.train import pace as pace_module
from mnist_np.train.pace import WINDOW, Pace
from mnist_np.train.sharded import ShardedStepper
from mnist_np.train.stepper import can_shard

needs_shards = pytest.mark.skipif(not can_shard(), reason="shards run as forked processes on Linux x86-64 only")
LONG_WAIT = 3.0  # seconds a process waits in the CPU-use tests
MOSTLY_ASLEEP = 0.01  # at most this share of the wait on the CPU (spinning would be ~1)


def children_cpu() -> float:
    """User + system seconds of this process's reaped children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def test_a_ring_before_the_wait_is_not_lost_and_a_wait_that_sleeps_says_so() -> None:
    bell = Doorbell()
    bell.ring()
    bell.ring()
    assert bell.wait() is False and bell.wait(spin=0) is False  # both rings were counted

    pid = os.fork()
    if pid == 0:
        time.sleep(0.3)
        bell.ring()
        os._exit(0)
    assert bell.wait() is True  # 0.3 s away: it slept
    os.waitpid(pid, 0)


def test_a_sleeping_wait_checks_and_its_check_ends_it() -> None:
    bell, calls = Doorbell(), []

    def check() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise TimeoutError("the other side is gone")

    with pytest.raises(TimeoutError):
        bell.wait(check=check)
    assert len(calls) == 2


def test_a_process_waiting_on_a_doorbell_uses_almost_no_cpu() -> None:
    bell = Doorbell()
    before = children_cpu()
    pid = os.fork()
    if pid == 0:
        try:
            bell.wait()
        finally:
            os._exit(0)
    time.sleep(LONG_WAIT)
    bell.ring()
    os.waitpid(pid, 0)
    assert children_cpu() - before < MOSTLY_ASLEEP * LONG_WAIT


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    x = (rng.normal(size=(n, 784)) + y[:, None] * 0.5).astype(np.float32)
    return x, y


class Scripted(Pace):
    """A pace that follows a script: step ``i`` (0-based) runs parallel when ``parallel(i)``."""

    def __init__(self, parallel) -> None:
        super().__init__()
        self._script, self._i = parallel, -1

    def step(self) -> bool:
        self._i += 1
        self.parallel = bool(self._script(self._i))
        return self.parallel


def train_steps(make_optimizer, pace: Pace, steps: int = 40, batch_size: int = 64, threads: int = 2,
                dropout: float = 0.2, pause: int = 0) -> dict[str, np.ndarray]:
    """``steps`` sharded steps on blobs (a short batch among them), the pace deciding who computes the shards."""
    x, y = blobs(1000, seed=1)
    model = MLP.initialize([784, 16, 3], ACTIVATIONS["relu"](), INITIALIZERS["he"], np.random.default_rng(0),
                           dropout=dropout)
    order = np.random.default_rng(3).permutation(len(y))
    with ShardedStepper(model, make_optimizer(), x, y, batch_size, threads, np.random.default_rng(2),
                        pace=pace) as stepper:
        for i in range(steps):
            rows = order[(i * batch_size) % 960:][:batch_size if i % 7 else 5]  # every 7th batch short
            stepper.step(rows, 0.05)
            if pause and i == pause:
                stepper.sync()
                time.sleep(0.3)  # the workers fall asleep
        stepper.sync()
        return {k: v.copy() for k, v in model.params.items()}


@needs_shards
@pytest.mark.parametrize("make_optimizer",
                         [lambda: SGD(momentum=0.9, nesterov=True, weight_decay=5e-4), lambda: Adam(weight_decay=1e-3)],
                         ids=["sgd-nesterov", "adam"])
@pytest.mark.parametrize("threads", [2, 3])
def test_the_same_bits_whoever_computes_the_shards(make_optimizer, threads: int) -> None:
    """All parallel, all in the caller, or switching back and forth: the shard layout decides the bits, not who runs
    it."""
    parallel = train_steps(make_optimizer, Scripted(lambda i: True), threads=threads, pause=10)
    inline = train_steps(make_optimizer, Scripted(lambda i: False), threads=threads)
    mixed = train_steps(make_optimizer, Scripted(lambda i: (i // 3) % 2 == 0 or i > 30), threads=threads, pause=10)
    for k in parallel:
        assert np.array_equal(parallel[k], inline[k]), k
        assert np.array_equal(parallel[k], mixed[k]), k


@needs_shards
@pytest.mark.parametrize("threads", [2, 3])
def test_the_caller_fuses_row_wise_products_only_where_each_shard_keeps_its_bits(monkeypatch, threads: int) -> None:
    """In the caller, the shards' row-wise products are made once for all rows where the first step of each batch
    length shows the same bits as shard after shard; where a fused step differs by one ulp, never again."""
    make = lambda: SGD(momentum=0.9, nesterov=True)  # noqa: E731
    decided: list[dict[int, bool]] = []
    exit_ = ShardedStepper.__exit__
    monkeypatch.setattr(ShardedStepper, "__exit__", lambda self, *a: decided.append(dict(self.fused)) or exit_(self))
    parallel = train_steps(make, Scripted(lambda i: True), threads=threads)
    inline = train_steps(make, Scripted(lambda i: False), threads=threads)
    assert set(decided[-1]) == {64, 5} and all(isinstance(v, bool) for v in decided[-1].values()), decided
    assert all(np.array_equal(parallel[k], inline[k]) for k in parallel)

    fused_steps = []
    real = MLP.shard_gradients

    def off_by_one_ulp(self, ws, n, y, shards, *args):
        fused_steps.append(n)
        results = real(self, ws, n, y, shards, *args)
        w = shards[0][2]["W1"]
        i = int(np.argmax(np.abs(w)))  # a gradient that is not 0 (the border pixels' are; one ulp above 0 is subnormal)
        assert w.flat[i] != 0
        w.flat[i] = np.nextafter(w.flat[i], w.dtype.type(np.inf))  # in w's dtype (NumPy 1's scalars go to float64)
        return results

    monkeypatch.setattr(MLP, "shard_gradients", off_by_one_ulp)
    differing = train_steps(make, Scripted(lambda i: False), threads=threads)
    assert decided[-1] == {64: False, 5: False}
    assert sorted(fused_steps) == [5, 64]  # tried once per batch length, then never
    assert all(np.array_equal(parallel[k], differing[k]) for k in parallel)


@needs_shards
def test_a_waiting_shard_process_uses_almost_no_cpu() -> None:
    """Between epochs (here: a long pause after a few steps) the shard process sleeps until the next step."""
    x, y = blobs(256, seed=1)
    model = MLP.initialize([784, 16, 3], ACTIVATIONS["relu"](), INITIALIZERS["he"], np.random.default_rng(0))

    def worker_cpu(wait: float) -> float:
        before = children_cpu()
        with threadpool_limits(limits=1,
                               user_api="blas"), ShardedStepper(model, SGD(), x, y, 64, 2,
                                                                pace=Scripted(lambda i: True)) as stepper:
            for i in range(4):
                stepper.step(np.arange(i * 64, (i + 1) * 64), 0.01)
            stepper.sync()
            time.sleep(wait)
        return children_cpu() - before  # the worker is reaped on exit

    # The same steps, then a short and a long wait: the difference is the long wait's own CPU. (A new worker's
    # OpenBLAS thread spins for about 0.1 s of its first second, whatever the wait: both include it.) The smaller
    # of two such differences: on a machine busy with other tests one pair can differ by that spin's noise (0.08 s
    # seen once, under pytest -n 3), while a worker that spins through its wait costs more than that every time.
    extra = []
    for _ in range(2):
        short, long = worker_cpu(1.0), worker_cpu(1.0 + LONG_WAIT)
        extra.append(long - short)
        if extra[-1] < MOSTLY_ASLEEP * LONG_WAIT:
            break
    assert min(extra) < MOSTLY_ASLEEP * LONG_WAIT, f"{min(extra):.3f} s of CPU over a {LONG_WAIT} s wait"


@needs_shards
def test_the_caller_waiting_for_a_stopped_worker_uses_almost_no_cpu() -> None:
    """A shard process that does not come (stopped here; on a busy machine: not scheduled): the caller sleeps too."""
    x, y = blobs(256, seed=1)
    model = MLP.initialize([784, 16, 3], ACTIVATIONS["relu"](), INITIALIZERS["he"], np.random.default_rng(0))
    with ShardedStepper(model, SGD(), x, y, 64, 2, pace=Scripted(lambda i: True)) as stepper:
        stepper.step(np.arange(64), 0.01)
        stepper.sync()
        (worker,) = stepper._workers.values()
        os.kill(worker, 19)  # SIGSTOP
        waker = subprocess.Popen([sys.executable, "-c",
                                  f"import os, time; time.sleep({LONG_WAIT}); os.kill({worker}, 18)"])
        before = resource.getrusage(resource.RUSAGE_SELF)
        stepper.step(np.arange(64, 128), 0.01)  # waits for the stopped worker until SIGCONT
        after = resource.getrusage(resource.RUSAGE_SELF)
        waker.wait()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < MOSTLY_ASLEEP * LONG_WAIT + 0.05, f"{cpu:.3f} s of CPU over a {LONG_WAIT} s wait"  # + the step itself


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_pace(pace: Pace, clock: FakeClock, steps: int, parallel_s: float, inline_s: float,
             sleeps: bool = False) -> list[bool]:
    """``steps`` steps of a pace on a fake clock: each takes the seconds of its mode; parallel ones sleep if
    ``sleeps``."""
    modes = []
    for _ in range(steps):
        parallel = pace.step()
        modes.append(parallel)
        if parallel and sleeps:
            pace.slept()
        clock.now += (parallel_s if parallel else inline_s) * 1e-4  # in units of 100 µs: steps of a default run
    return modes


def test_pace_stays_parallel_where_waits_do_not_sleep() -> None:
    clock = FakeClock()
    pace = Pace(clock)
    assert all(run_pace(pace, clock, 50 * WINDOW, parallel_s=1.0, inline_s=1.8))


def test_pace_goes_inline_when_a_core_is_taken_and_comes_back_when_it_returns() -> None:
    clock = FakeClock()
    pace = Pace(clock)
    busy = run_pace(pace, clock, 20 * WINDOW, parallel_s=3.0, inline_s=1.8, sleeps=True)  # another job on the cores
    assert not busy[-1] and busy.count(True) < 0.25 * len(busy)  # inline, but for the first windows and short trials
    quiet = run_pace(pace, clock, 40 * WINDOW, parallel_s=1.0, inline_s=1.8)  # the job ended
    assert all(quiet[-10 * WINDOW:])


def test_pace_trials_in_the_caller_back_off_when_they_lose() -> None:
    """Steps that sleep but would not be faster inline (a noisy machine): the trials get rarer."""
    clock = FakeClock()
    pace = Pace(clock)
    modes = run_pace(pace, clock, 200 * WINDOW, parallel_s=1.0, inline_s=1.8, sleeps=True)
    assert modes[-1] and pace.switches == 0
    late_trials = modes[100 * WINDOW:].count(False) / WINDOW
    assert late_trials <= 100 // 32 + 1  # cooldown doubling: at most one trial per 32 windows late on


def test_pace_parallel_trials_back_off_while_the_load_stays() -> None:
    clock = FakeClock()
    pace = Pace(clock)
    run_pace(pace, clock, 10 * WINDOW, parallel_s=3.0, inline_s=1.8, sleeps=True)
    modes = run_pace(pace, clock, 400 * WINDOW, parallel_s=3.0, inline_s=1.8, sleeps=True)
    late = modes[200 * WINDOW:]
    assert late.count(True) <= WINDOW * (len(late) // (pace_module.LONGEST_WAIT * WINDOW) + 1)


def test_pace_makes_no_parallel_trial_while_no_core_stands_idle() -> None:
    """Inline because another job holds the other core: no trial until the idle cores say one is free."""
    clock, spare = FakeClock(), [0.0]
    looks = []
    pace = Pace(clock, idle=lambda: looks.append(1) or spare[0])
    run_pace(pace, clock, 4 * WINDOW, parallel_s=3.0, inline_s=1.8, sleeps=True)  # to inline
    assert not pace.parallel and pace.switches == 1
    trials = pace.trials
    busy = run_pace(pace, clock, 100 * WINDOW, parallel_s=3.0, inline_s=1.8, sleeps=True)
    assert len(looks) >= 100 // pace_module.CHECK_WINDOWS - 1
    # A trial only once every LONGEST_WAIT windows (the idle cores might be wrong), ended after ABORT_STEPS.
    assert pace.trials - trials <= 100 // pace_module.LONGEST_WAIT + 1
    assert busy.count(True) <= (pace.trials - trials) * pace_module.ABORT_STEPS
    spare[0] = 1.0  # the other job ended
    quiet = run_pace(pace, clock, (2 * pace_module.CHECK_WINDOWS + 2) * WINDOW, parallel_s=1.0, inline_s=1.8)
    assert quiet[-1] and pace.switches == 2


def test_a_trial_that_is_clearly_slower_ends_early() -> None:
    clock = FakeClock()
    pace = Pace(clock, idle=lambda: 1.0)  # a core looks idle, yet parallel steps are slow (a cgroup quota, say)
    run_pace(pace, clock, 4 * WINDOW, parallel_s=3.0, inline_s=1.0, sleeps=True)
    assert not pace.parallel
    modes = run_pace(pace, clock, (pace_module.CHECK_WINDOWS + 2) * WINDOW, parallel_s=3.0, inline_s=1.0)
    assert pace.trials >= 2 and 0 < modes.count(True) <= pace_module.ABORT_STEPS + 1


@pytest.mark.skipif(not can_shard() or shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2,
                    reason="needs shard processes, taskset and 2 cores")
def test_two_shards_on_one_core_give_the_bits_of_two_cores(tmp_path: Path) -> None:
    """``trainer.threads=2`` under ``taskset -c 0``: the shards take turns on one core (or run in the caller); same
    bits."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import hashlib, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import numpy as np
        from test_busy_machine import blobs
        from mnist_np.nn.model import MLP
        from mnist_np.nn.optim import SGD
        from mnist_np.nn.schedules import Schedule
        from mnist_np.nn.registry import ACTIVATIONS, INITIALIZERS
        from mnist_np.train.loop import TrainSettings, fit
        x, y = blobs(3000, seed=1)
        model = MLP.initialize([784, 32, 3], ACTIVATIONS["relu"](), INITIALIZERS["he"], np.random.default_rng(0),
                               dropout=0.1)
        fit(model, SGD(momentum=0.9), Schedule("constant", 0.05, 3), x, y, x[:100], y[:100],
            TrainSettings(epochs=3, batch_size=64, threads=2), np.random.default_rng(1), np.random.default_rng(2))
        print(hashlib.sha256(b"".join(model.params[k].tobytes() for k in sorted(model.params))).hexdigest())
    """))
    core = str(min(os.sched_getaffinity(0)))
    both = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
    one = subprocess.run(["taskset", "-c", core, sys.executable, str(script)], capture_output=True, text=True,
                         check=True).stdout
    assert both == one and len(both.strip()) == len(hashlib.sha256().hexdigest())
