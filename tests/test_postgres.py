"""The team recipe for real: a shared ``mlflow server`` whose runs live in PostgreSQL.

A throwaway PostgreSQL cluster (``initdb`` in a temp dir, its own port on
127.0.0.1; the ``postgres`` fixture), an ``mlflow server`` on it with
proxied artifacts, and a 4-member joblib sweep sent to it by
``scripts/train.py --multirun`` (4 joblib workers) -- with the server
SIGKILLed while every member is training and started again on the same
database, then ``scripts/sync.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import LiveServer
from mnist_np.tracking.conventions import OFFLINE_TAG
from test_load import check_members, crash_mid_sweep_then_sync
from test_sweeps import parent_and_children

pytestmark = pytest.mark.slow
MEMBERS = 4


@pytest.mark.fault("load", "postgresql")
def test_a_team_server_on_postgresql_loses_nothing_when_it_crashes_mid_sweep(postgres, tmp_path: Path, lost) -> None:
    server = LiveServer(tmp_path / "server", backend_store_uri=postgres.create_database("team"))
    try:
        # All members at once, so that every one is training when the server dies (one that
        # started while it was down would fail fast, by design, before creating its run).
        epochs = 5
        uri, _ = crash_mid_sweep_then_sync(server, tmp_path, MEMBERS, epochs)  # the same database after the restart
        client, parent, children = parent_and_children(uri)
        assert parent.info.status == "FINISHED" and parent.data.metrics["members_finished"] == MEMBERS
        assert any(OFFLINE_TAG in c.data.tags for c in children), (
            "no member ever lost the server: the fault did not happen")
        check_members(client, children, epochs=epochs, lost=lost, members=MEMBERS)
        assert server.server.backend_store_uri.startswith("postgresql://")
    finally:
        server.stop()
