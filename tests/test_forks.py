"""No fork with other threads alive: every ``os.fork`` of a run or a sweep happens while its process has one thread.

A child of ``fork`` (without ``exec``) holds a copy of every lock as it was
at that instant, but only the thread that forked: a lock another thread held
then (logging's, SQLite's, the allocator's) stays held in the child for good,
and the child hangs the first time it takes it. The package forks its shard
processes, its augmentation worker and its figure children; MLflow's
system-metrics monitor (a thread) runs around all of them, and tqdm's
monitor thread, once started by any progress bar, never ends.

Each test wraps ``os.fork`` and records, at every call, how many threads are
alive and their names, then asserts that every record says one and that the
forks it is about did happen. In-process for single runs (a monkeypatch);
for sweeps, which run as subprocesses (and, with the joblib launcher, in
loky worker processes forked from a forkserver), a ``sitecustomize.py`` on
``PYTHONPATH`` installs the same wrapper in every Python process started,
writing one JSON line per fork to a file.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import PYTHON, TRAIN_SCRIPT, small_overrides
from helpers.stores import migrated_store
from mnist_np.common import forking
from mnist_np.common.paths import PROJECT_ROOT
from mnist_np.experiment.config.compose import compose
from mnist_np.experiment.run.single import run
from mnist_np.train.stepper import can_shard

pytestmark = pytest.mark.skipif(not can_shard(), reason="the package forks only on Linux x86-64")

# Where a fork comes from, by the package's function that asked for it (the innermost one on the stack).
SITES = {"ShardedStepper._fork": "shards", "AugmentedEpochs.__enter__": "augmentation", "in_children": "figures"}
LOG_ENV = "MNIST_NP_TEST_FORK_LOG"
# Installed in every Python process of a sweep (PYTHONPATH): records each os.fork as one JSON line in $LOG_ENV.
SITECUSTOMIZE = '''\
"""Test-only (tests/test_forks.py): every os.fork of this process, recorded before it happens."""
import os

if os.environ.get("{env}"):
    import json
    import threading
    import traceback

    _real_fork = os.fork
    # The first process (the sweep's own) names itself; every process it starts inherits the variable.
    _root = int(os.environ.setdefault("{env}_ROOT", str(os.getpid())))

    def _recording_fork():
        stack = ["%s:%s.%s" % (os.path.basename(f.filename), f.lineno, f.name) for f in traceback.extract_stack()[:-1]]
        record = {{"pid": os.getpid(), "main": os.getpid() == _root, "threads": threading.active_count(),
                   "names": sorted(t.name for t in threading.enumerate()), "stack": stack}}
        fd = os.open(os.environ["{env}"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(record) + "\\n").encode())  # one write: lines of processes never mix
        finally:
            os.close(fd)
        return _real_fork()

    os.fork = _recording_fork
'''.format(env=LOG_ENV)


def record_forks(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every ``os.fork`` in this process from now on: threads alive (count, names) and where it came from."""
    records: list[dict[str, Any]] = []
    real: Callable[[], int] = os.fork

    def recording_fork() -> int:
        caller = sys._getframe(1)
        qualnames = []
        while caller is not None:
            qualnames.append(caller.f_code.co_qualname)
            caller = caller.f_back
        records.append({"threads": threading.active_count(), "names": sorted(t.name for t in threading.enumerate()),
                        "site": next((SITES[q] for q in qualnames if q in SITES), "other")})
        return real()

    monkeypatch.setattr(os, "fork", recording_fork)
    return records


def threads_left(seconds: float = 1.0) -> list[str]:
    """The names of this process's other threads, once garbage is collected and they had ``seconds`` to end."""
    gc.collect()
    deadline = time.monotonic() + seconds
    for thread in threading.enumerate():
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    return sorted(t.name for t in threading.enumerate() if t is not threading.current_thread())


def describe(records: list[dict[str, Any]]) -> list[str]:
    """One line per fork: where from, and the threads alive then."""
    return [f"{r.get('where', r['site'])}: {r['threads']} thread(s) {r['names']}" for r in records]


@pytest.mark.parametrize("extra, sites", [
    ((), {"shards", "figures"}),
    (("augment=shift",), {"shards", "augmentation", "figures"}),
], ids=["default", "augmented"])
def test_a_run_forks_only_with_one_thread(tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          extra: tuple[str, ...], sites: set[str]) -> None:
    """Shard processes, the augmentation worker and the figure children, with system metrics logged (the default)."""
    already = threads_left()
    assert already == [], f"threads an earlier test left running in this process (not the run's): {already}"
    forks = record_forks(monkeypatch)
    cfg = compose(small_overrides(tracking_uri, "trainer.threads=2", "mlflow.log_plots=true",
                                  "mlflow.log_system_metrics=true", *extra))
    run(cfg, output_dir=tmp_path / "run")
    print("\n".join(describe(forks)))
    assert {r["site"] for r in forks} >= sites, describe(forks)
    assert [r for r in forks if r["threads"] != 1] == [], "\n".join(describe(forks))


def sweep_forks(tmp_path: Path, members: int, *args: str) -> tuple[subprocess.CompletedProcess, list[dict[str, Any]]]:
    """Run a ``--multirun`` of ``members`` seeds with every fork site on; returns it and every fork of every process."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "forks.jsonl"
    env = {**os.environ, LOG_ENV: str(log),
           "PYTHONPATH": os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)}
    cmd = [
        PYTHON, str(TRAIN_SCRIPT), "--multirun", "seed=" + ",".join(map(str, range(members))), *args,
        f"mlflow.tracking_uri={migrated_store(tmp_path / 'store' / 'mlflow.db')}", "mlflow.experiment_name=forks",
        "mlflow.log_plots=true", "mlflow.log_system_metrics=true", "augment=shift", "trainer.threads=2",
        "data.train_limit=1000", "data.val_size=500", "trainer.epochs=1", "trainer.progress=false",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=PROJECT_ROOT)
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for r in records:
        r["site"] = next((site for frame in reversed(r["stack"]) for name, site in _BY_FILE.items()
                          if re.search(name, frame)), "other")
        r["where"] = f"{r['site']} in {'the sweep' if r['main'] else 'process'} {r['pid']}"
    return proc, records


# The sitecustomize sees plain function names: a fork site by its module file and function.
_BY_FILE = {r"sharded\.py:\d+\._fork$": "shards", r"augmented\.py:\d+\.__enter__$": "augmentation",
            r"speedups\.py:\d+\.in_children$": "figures", r"forkserver\.py:\d+\.main$": "forkserver"}


@pytest.mark.slow
@pytest.mark.parametrize("launcher, members", [((), 2), (("+sweep=parallel",), 3)], ids=["basic", "joblib"])
def test_a_sweep_forks_only_with_one_thread(tmp_path: Path, launcher: tuple[str, ...], members: int) -> None:
    """Members one after another in the sweep's process (basic), or in loky workers forked by a forkserver (joblib).

    Three joblib members on its two workers: one worker trains two, after each other, as the basic launcher does.
    """
    proc, forks = sweep_forks(tmp_path, members, *launcher)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print("\n".join(describe(forks)))
    package = [r for r in forks if r["site"] in ("shards", "augmentation", "figures")]
    # Each member: one shard process, one augmentation worker, two figure children.
    assert sorted(r["site"] for r in package) == sorted(["shards", "augmentation", "figures", "figures"] * members), \
        describe(forks)
    # Basic: the members train in the sweep's own process; joblib: in worker processes.
    assert {r["main"] for r in package} == {not launcher}, describe(forks)
    assert [r for r in forks if r["threads"] != 1] == [], "\n".join(describe(forks))
    assert "other thread(s) alive" not in proc.stderr


# ---------------------------------------------------------------- the fork function itself


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the fork function's warnings and waits as a new process would."""
    monkeypatch.setattr(forking, "_warned", set())
    monkeypatch.setattr(forking, "_stubborn", forking.weakref.WeakSet())


def fork_and_report(code: Callable[[], int]) -> int:
    """Fork with :func:`forking.fork`; the child exits with ``code()`` (computed there); returns that status."""
    pid = forking.fork()
    if pid == 0:
        status = 99
        try:
            status = code()
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


class Sleeper:
    """A thread of ours that can be paused: it waits on an event until told to stop; resumed, a new thread."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.pauses = self.resumes = 0

    def start(self) -> None:
        self.stop.clear()
        self.thread = threading.Thread(target=self.stop.wait, name="sleeper", daemon=True)
        self.thread.start()

    def pause(self) -> None:
        self.pauses += 1
        self.stop.set()
        assert self.thread is not None
        self.thread.join()

    def resume(self) -> None:
        self.resumes += 1
        self.start()


def test_a_registered_thread_is_paused_for_the_fork_and_resumed_in_the_parent_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert threads_left() == []
    forks = record_forks(monkeypatch)
    sleeper = Sleeper()
    sleeper.start()
    try:
        with forking.pausable("sleeper", sleeper.pause, sleeper.resume):
            # In the child: no thread but its own, and nothing registered that a fork of its own would resume.
            assert fork_and_report(lambda: threading.active_count() * 10 + len(forking._registered)) == 10
            assert sleeper.thread is not None and sleeper.thread.is_alive()
            with forking.paused():  # several forks, one pause
                assert fork_and_report(lambda: 0) == 0
                assert fork_and_report(lambda: 0) == 0
            assert sleeper.thread.is_alive()
        assert fork_and_report(lambda: 0) == 0  # out of the block: no longer paused
    finally:
        sleeper.stop.set()
    assert (sleeper.pauses, sleeper.resumes) == (2, 2)
    assert [r["threads"] for r in forks] == [1, 1, 1, 2]


def test_idle_workers_of_a_thread_pool_that_is_garbage_end_before_the_fork(monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """As MLflow's artifact repositories leave them: a pool in a reference cycle, freed only by the collector."""
    assert threads_left() == []

    class Holder:  # a reference cycle around the pool, as ArtifactRepository's async queue makes
        def __init__(self) -> None:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="pool-in-a-cycle")
            self.me = self

    Holder().pool.submit(int).result()  # one idle worker thread; the holder is garbage from here
    assert "pool-in-a-cycle_0" in [t.name for t in threading.enumerate()]
    forks = record_forks(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=forking.__name__):
        assert fork_and_report(lambda: 0) == 0
    assert [r["threads"] for r in forks] == [1]
    assert caplog.records == []


def test_a_thread_that_is_not_ours_is_named_once_and_waited_for_once(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    assert threads_left() == []
    stop = threading.Event()
    stranger = threading.Thread(target=stop.wait, name="stranger", daemon=True)
    stranger.start()
    try:
        with caplog.at_level(logging.WARNING, logger=forking.__name__):
            assert fork_and_report(lambda: 0) == 0
            started = time.monotonic()
            assert fork_and_report(lambda: 0) == 0
            second = time.monotonic() - started
    finally:
        stop.set()
        stranger.join()
    assert [r.getMessage() for r in caplog.records] == [
        "forking with 1 other thread(s) alive: stranger; the child may hang on a lock one of them held "
        "(switch it off, or register it with mnist_np.common.forking.pausable)"]
    assert second < forking.SETTLE_SECONDS  # not waited for again


def test_system_metrics_go_on_through_forks(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor is paused for each fork and resumed after it, with its steps going on: none lost, none twice."""
    from mnist_np.tracking.client import connect, experiment_id
    from mnist_np.tracking.system_metrics import system_metrics

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    client = connect(tracking_uri)
    run_id = client.create_run(experiment_id(client, tracking_uri, "forks")).info.run_id
    forks = record_forks(monkeypatch)
    with system_metrics(tracking_uri, run_id, enabled=True):
        for _ in range(3):
            time.sleep(0.5)
            assert fork_and_report(threading.active_count) == 1
            assert "SystemMetricsMonitor" in [t.name for t in threading.enumerate()]  # resumed
    client.set_terminated(run_id)
    steps = sorted(m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage"))
    assert steps == list(range(len(steps))) and len(steps) >= 4, steps
    assert [r["threads"] for r in forks] == [1, 1, 1]


def test_tqdm_bars_leave_no_thread_behind() -> None:
    """Our progress bars, a download's and MLflow's all are tqdm's: its monitor thread is off for all of them."""
    import tqdm
    import tqdm.auto

    import mnist_np.tracking.client  # noqa: F401 -- switches MLflow's artifact bars off
    import mnist_np.train.loop  # noqa: F401 -- switches the monitor off

    before = set(threading.enumerate())  # another test's thread may still be ending: only new ones count
    with open(os.devnull, "w") as devnull:
        for bar_class in (tqdm.tqdm, tqdm.auto.tqdm):
            for _ in bar_class(range(3), disable=False, file=devnull):
                pass
    assert set(threading.enumerate()) - before == set()
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


def test_the_package_forks_only_through_the_fork_function() -> None:
    """A fork elsewhere would not pause the package's threads."""
    calls = sorted(str(p.relative_to(PROJECT_ROOT)) for p in (PROJECT_ROOT / "mnist_np").rglob("*.py")
                   if re.search(r"\bos\.fork\(|\bfrom os import .*\bfork\b", p.read_text()))
    assert calls == ["mnist_np/common/forking.py"]
