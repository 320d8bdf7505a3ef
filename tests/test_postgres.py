"""The team recipe for real: a shared ``mlflow server`` whose runs live in PostgreSQL.

A throwaway PostgreSQL cluster (``initdb`` in a temp dir, its own port on
127.0.0.1; the ``postgres`` fixture), an ``mlflow server`` on it with
proxied artifacts, and a 4-member joblib sweep sent to it by
``scripts/train.py --multirun`` (4 joblib workers) -- with the server
SIGKILLed while every member is training and started again on the same
database, then ``scripts/sync.py``.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from conftest import PYTHON, TRAIN_SCRIPT, LiveServer
from mnist_np.tracking.conventions import OFFLINE_TAG
from test_load import check_members
from test_sweeps import parent_and_children, sweep

pytestmark = pytest.mark.slow
MEMBERS = 4


@pytest.mark.fault("load", "postgresql")
def test_a_team_server_on_postgresql_loses_nothing_when_it_crashes_mid_sweep(postgres, tmp_path: Path, lost) -> None:
    server = LiveServer(tmp_path / "server", backend_store_uri=postgres.create_database("team"))
    try:
        epochs = 10
        # All members at once, so that every one is training when the server dies (one that
        # started while it was down would fail fast, by design, before creating its run).
        proc, uri = sweep(tmp_path, "+sweep=parallel", f"hydra.launcher.n_jobs={MEMBERS}", f"seed=range({MEMBERS})", epochs=epochs,
                          train_limit=3000, tracking_uri=server.url, wait=False)
        try:
            logs = [tmp_path / "sweep" / str(i) / "metrics.jsonl" for i in range(MEMBERS)]
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None and not all(p.exists() and p.stat().st_size for p in logs):
                time.sleep(0.2)
            assert all(p.exists() and p.stat().st_size for p in logs), "not every member got to its first epoch"
            server.kill()
            time.sleep(2)
            server.restart()  # the same database: what the server had stored is still there
            output, _ = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0 or "upload them with python scripts/sync.py" in output, output[-3000:]
        sync = subprocess.run([PYTHON, str(TRAIN_SCRIPT.parent / "sync.py"), str(tmp_path / "sweep")],
                              capture_output=True, text=True, timeout=600)
        assert sync.returncode == 0, sync.stderr[-3000:]
        client, parent, children = parent_and_children(uri)
        assert parent.info.status == "FINISHED" and parent.data.metrics["members_finished"] == MEMBERS, (
            [(c.info.status, c.data.tags.get("failure_reason")) for c in children], sync.stdout, output[-2000:])
        assert any(OFFLINE_TAG in c.data.tags for c in children), "no member ever lost the server: the fault did not happen"
        check_members(client, children, epochs=epochs, lost=lost, members=MEMBERS)
        assert server.server.backend_store_uri.startswith("postgresql://")
    finally:
        server.stop()
