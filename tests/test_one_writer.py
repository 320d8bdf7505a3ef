"""One writer per run: a run's output dir is locked while its process trains it, and a second command is refused.

The lock itself (mnist_np.common.locks) is tested in-process; the commands a
user runs -- ``resume=`` of a run still training, two resumes racing for a
killed run, ``--multirun resume=`` of a sweep still running -- as
subprocesses of ``scripts/train.py`` against a real SQLite store.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, TRAIN_SCRIPT
from helpers.stores import migrated_store
from mnist_np.common import locks
from mnist_np.train.checkpoint import latest_checkpoint

# --- the lock -----------------------------------------------------------------


def _hold_in_child(folder: Path, ready: Path) -> subprocess.Popen:
    """Another process that takes ``folder``'s lock and keeps it until killed."""
    code = ("import sys, time, pathlib; from mnist_np.common import locks; "
            "locks.acquire(pathlib.Path(sys.argv[1]), 'run x'); pathlib.Path(sys.argv[2]).touch(); time.sleep(600)")
    proc = subprocess.Popen([PYTHON, "-c", code, str(folder), str(ready)])
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert ready.exists(), "the holder never took the lock"
    return proc


def test_a_held_lock_names_its_holder_and_dies_with_it(tmp_path: Path) -> None:
    proc = _hold_in_child(tmp_path, tmp_path / "ready")
    try:
        who = locks.holder(tmp_path)
        assert who is not None and who.pid == proc.pid and who.host == socket.gethostname()
        with pytest.raises(locks.LockHeld) as e:
            locks.acquire(tmp_path, f"run {tmp_path}")
        line = str(e.value)
        assert "\n" not in line and f"run {tmp_path} is in use by pid {proc.pid} on host {socket.gethostname()}" in line
    finally:
        proc.kill()  # SIGKILL: no clean-up code runs; the kernel drops the lock
        proc.wait()
    assert locks.holder(tmp_path) is None
    with locks.locked(tmp_path, "run x") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert locks.holder(tmp_path) is None


def test_a_process_takes_its_own_lock_again_and_forked_children_never_hold_it(tmp_path: Path) -> None:
    path = locks.acquire(tmp_path, "run x")
    assert locks.acquire(tmp_path, "run x") == path  # the same process: a second hold
    locks.release(path)
    pid = os.fork()
    if pid == 0:  # a child, as a shard or figure process would be: the lock is not its own
        code = 0 if path not in locks._held else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    # The child's exit closed only its copy: the lock is still this process's.
    probe = subprocess.run([PYTHON, "-c", "import sys, pathlib; from mnist_np.common import locks; "
                            "print(locks.holder(pathlib.Path(sys.argv[1])))", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
    assert f"pid={os.getpid()}" in probe.stdout, probe.stderr
    locks.release(path)
    assert path not in locks._held


def test_a_filesystem_that_cannot_lock_is_named_not_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(locks.LockUnsupported) as e:
        locks.acquire(tmp_path, "run x")
    assert "\n" not in str(e.value) and "does not support locks" in str(e.value) and str(tmp_path) in str(e.value)


# --- the commands ---------------------------------------------------------------


def _args(tmp_path: Path) -> list[str]:
    # Batches of 32 make an epoch of 20,000 images last long enough (~0.3 s) for a second command to start meanwhile.
    # One thread: what matters here is how long the run lasts, and a second shard process would only add CPU.
    return [f"mlflow.tracking_uri={migrated_store(tmp_path / 'store' / 'mlflow.db')}", "mlflow.experiment_name=writers",
            "mlflow.log_plots=false", "trainer.progress=false", "data.train_limit=20000", "data.val_size=2000",
            "trainer.batch_size=32", "trainer.threads=1"]


def _start_run(tmp_path: Path, out: Path, epochs: int) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, str(TRAIN_SCRIPT), *_args(tmp_path), f"trainer.epochs={epochs}",
                             f"hydra.run.dir={out}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and latest_checkpoint(out / "checkpoints") is None:
        time.sleep(0.05)
    assert latest_checkpoint(out / "checkpoints") is not None, "the run never wrote a checkpoint"


def _resume(tmp_path: Path, run_id: str, name: str) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, str(TRAIN_SCRIPT), *_args(tmp_path), f"resume={run_id}",
                             f"hydra.run.dir={tmp_path / name}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _steps(client: MlflowClient, run_id: str, key: str = "val_accuracy") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
@pytest.mark.fault("training faults", "refused")
def test_resume_of_a_run_that_is_still_training_is_refused(tmp_path: Path) -> None:
    out, epochs = tmp_path / "run", 30
    proc = _start_run(tmp_path, out, epochs)
    try:
        _wait_for_checkpoint(proc, out)
        run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
        second = _resume(tmp_path, run_id, "second")
        _, err = second.communicate(timeout=300)
        live = proc.poll() is None
        _, first_err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert live, "the first run ended before the second command was refused: the test proves nothing"
    assert second.returncode == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: run {run_id} ")
    assert f"pid {proc.pid} on host {socket.gethostname()}" in lines[0]
    assert proc.returncode == 0, first_err[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    done = client.get_run(run_id)
    assert done.info.status == "FINISHED" and "resumed_from_epoch" not in done.data.tags
    for key in ("val_accuracy", "train_loss", "lr"):
        assert _steps(client, run_id, key) == list(range(1, epochs + 1)), key  # one point per epoch, never two
    assert len((out / "metrics.jsonl").read_text().splitlines()) == epochs
    journal = [json.loads(line)["op"] for line in (out / "mlflow_journal.jsonl").read_text().splitlines()]
    assert "reopen" not in journal and journal.count("start") == 1  # the refused command wrote nothing into the run


@pytest.mark.slow
@pytest.mark.fault("training faults", "one winner")
def test_two_resumes_racing_for_a_killed_run_one_wins(tmp_path: Path) -> None:
    out, epochs = tmp_path / "run", 30
    proc = _start_run(tmp_path, out, epochs)
    try:
        _wait_for_checkpoint(proc, out)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    racers = [_resume(tmp_path, run_id, f"resume-{i}") for i in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "") for p in racers]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2).strip().splitlines()
    winner = next(p for p, (code, _) in zip(racers, results) if code == 0)
    assert len(loser) == 1 and f"pid {winner.pid} on host {socket.gethostname()}" in loser[0]
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "FINISHED"
    assert _steps(client, run_id) == list(range(1, epochs + 1))


@pytest.mark.slow
@pytest.mark.fault("sweep killed", "refused")
def test_resume_of_a_sweep_that_is_still_running_is_refused(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    cmd = [PYTHON, str(TRAIN_SCRIPT), "--multirun", "seed=0,1", *_args(tmp_path), "trainer.epochs=15",
           f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_checkpoint(proc, sweep_dir / "0")
        second = subprocess.run([PYTHON, str(TRAIN_SCRIPT), "--multirun", f"resume={sweep_dir}"],
                                capture_output=True, text=True, timeout=300)
        live = proc.poll() is None
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert live, "the sweep ended before the second command was refused: the test proves nothing"
    assert second.returncode == 2, second.stderr[-3000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: sweep {sweep_dir} ") and f"pid {proc.pid} " in lines[0]
    assert proc.returncode == 0, err[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("writers").experiment_id])
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    assert all("resumed" not in r.data.tags and "resumed_from_epoch" not in r.data.tags for r in runs)
