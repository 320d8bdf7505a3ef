"""Load, with the real server: parallel sweeps against ``mlflow server``, and the server killed in the middle of one.

Each test starts its own ``mlflow server`` on 127.0.0.1 (SQLite store,
proxied artifacts; the ``mlflow_server`` fixture) and runs
``scripts/train.py --multirun`` as a subprocess, 8 members at once through
the joblib launcher, on small subsets of MNIST.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PYTHON, TRAIN_SCRIPT, LiveServer, mlflow_gaps
from mnist_np.common.locks import RUN_LOCK
from mnist_np.tracking.conventions import OFFLINE_TAG
from mnist_np.tracking.journal import JOURNAL_FILE, RUN_FILE
from test_sweeps import PER_EPOCH, parent_and_children, sweep

pytestmark = pytest.mark.slow
MEMBERS = 8


def check_members(client, children, epochs: int, lost, members: int = MEMBERS) -> None:
    """Every member FINISHED, every per-epoch metric at every epoch, nothing missing from its output dir."""
    finished = [c for c in children if c.info.status == "FINISHED"]
    gaps = [mlflow_gaps(client, c.info.run_id, Path(c.data.tags["hydra_output_dir"])) for c in children]
    lost.record(runs=members - len(finished), metrics=sum(g["metrics"] for g in gaps))
    assert len(children) == members and len(finished) == members, [c.info.status for c in children]
    for c in children:
        for name in PER_EPOCH:
            assert ([m.step for m in client.get_metric_history(c.info.run_id, name)]
                    == list(range(1, epochs + 1))), (c.info.run_name, name)
        assert "test_accuracy" in c.data.metrics and len(c.outputs.model_outputs) == 1
    assert gaps == [{"metrics": 0, "duplicates": 0, "files": 0}] * members


@pytest.mark.fault("load", "complete")
def test_eight_parallel_members_against_the_server(mlflow_server: LiveServer, tmp_path: Path, lost) -> None:
    proc, uri = sweep(tmp_path, "+sweep=parallel", f"hydra.launcher.n_jobs={MEMBERS}", f"seed=range({MEMBERS})",
                      epochs=2, train_limit=500, tracking_uri=mlflow_server.url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, parent, children = parent_and_children(uri)
    assert parent.info.status == "FINISHED" and parent.data.metrics["members_finished"] == MEMBERS
    assert sorted(int(c.data.params["seed"]) for c in children) == list(range(MEMBERS))
    check_members(client, children, epochs=2, lost=lost)


def crash_mid_sweep_then_sync(server: LiveServer, tmp_path: Path, members: int, epochs: int) -> tuple[str, str]:
    """A ``members``-member joblib sweep (all at once) to ``server``, killed with SIGKILL once every member has
    created its run (each held there until the last one has) and started again on the same store, then
    ``scripts/sync.py``; returns (the sweep's store, sync's stdout)."""
    proc, uri = sweep(tmp_path, "+sweep=parallel", f"hydra.launcher.n_jobs={members}", f"seed=range({members})",
                      epochs=epochs, train_limit=3000, tracking_uri=server.url, wait=False)
    try:
        # Every member is held (SIGSTOP) the moment its run exists, so that none can end before the last one
        # has started; then the server dies and the members go on, each with all its epochs still to log.
        held = hold_each_member_at_its_run_start(proc, tmp_path / "sweep", members, time.monotonic() + 300)
        server.kill()
        for pid in held:
            os.kill(pid, signal.SIGCONT)
        # Every member meets the dead server (its journal says it gave MLflow up) before it comes back;
        # then the whole sweep is paused while it restarts, so that nothing ends while it is down.
        journals = [tmp_path / "sweep" / str(i) / JOURNAL_FILE for i in range(members)]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not all(OFFLINE_TAG in j.read_text() for j in journals):
            time.sleep(0.1)
        assert all(OFFLINE_TAG in j.read_text() for j in journals), "a member never noticed the server was gone"
        os.killpg(proc.pid, signal.SIGSTOP)
        try:
            server.restart()
        finally:
            os.killpg(proc.pid, signal.SIGCONT)
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:  # the whole session: a held member is stopped, and would outlive its parent
            os.killpg(proc.pid, signal.SIGKILL)
    # The members caught up by themselves once the server was back, and the sweep ended normally.
    assert proc.returncode == 0, output[-3000:]

    sync = subprocess.run([PYTHON, str(TRAIN_SCRIPT.parent / "sync.py"), str(tmp_path / "sweep")],
                          capture_output=True, text=True, timeout=600)
    assert sync.returncode == 0, sync.stderr[-3000:]
    return uri, sync.stdout


def hold_each_member_at_its_run_start(proc: subprocess.Popen, sweep_dir: Path, members: int,
                                      deadline: float) -> list[int]:
    """SIGSTOP each member's process as soon as its run file exists (its MLflow run was created); returns their
    pids once all ``members`` are held. The pid is the one its output dir's lock records."""
    held: dict[int, int] = {}
    while len(held) < members and time.monotonic() < deadline and proc.poll() is None:
        for i in range(members):
            folder = sweep_dir / str(i)
            if i not in held and (folder / RUN_FILE).exists():
                held[i] = json.loads((folder / RUN_LOCK).read_text())["pid"]
                os.kill(held[i], signal.SIGSTOP)
        time.sleep(0.01)
    assert len(held) == members, f"only members {sorted(held)} of {members} created their runs"
    return list(held.values())


@pytest.mark.fault("load", "restarted")
def test_server_killed_and_restarted_mid_sweep_then_sync(mlflow_server: LiveServer, tmp_path: Path, lost) -> None:
    epochs = 6
    uri, synced = crash_mid_sweep_then_sync(mlflow_server, tmp_path, MEMBERS, epochs)
    lines = synced.splitlines()
    assert len(lines) == MEMBERS + 1 and lines[-1].endswith(f"{MEMBERS} of {MEMBERS} members finished"), synced

    client, parent, children = parent_and_children(uri)
    assert any(OFFLINE_TAG in c.data.tags for c in children), "no member ever lost the server: the fault did not happen"
    assert parent.info.status == "FINISHED" and parent.data.metrics["members_finished"] == MEMBERS
    check_members(client, children, epochs=epochs, lost=lost)
