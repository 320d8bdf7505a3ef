"""MLflow stores for tests: a SQLite file migrated once per test session, copied wherever a test needs a fresh store.

A new SQLite store costs MLflow's whole schema migration (about 1.5 s on
this machine) the first time anything opens it -- once per test that makes
one, and once more in every subprocess given a store of its own. A copy of
a store that was migrated once is the same fresh, empty store, ready in
milliseconds. The test that creates a store from scratch on purpose
(tests/test_tracking.py, a parallel first use in tests/test_sweeps.py)
keeps doing so.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_template: Path | None = None


def _migrated_template() -> Path:
    """The session's migrated, empty SQLite store (made on first use, removed at exit)."""
    global _template
    if _template is None:
        from mlflow.tracking import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="mnist-np-store-template-"))
        atexit.register(shutil.rmtree, folder, True)
        db = folder / "mlflow.db"
        MlflowClient(f"sqlite:///{db}").search_experiments()  # creates and migrates it
        _template = db
    return _template


def migrated_store(db: Path) -> str:
    """A migrated SQLite MLflow store at ``db``, copied there unless a store is there already; returns its URI."""
    db = Path(db)
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_migrated_template(), db)
    return f"sqlite:///{db}"
