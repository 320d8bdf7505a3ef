"""Shared fixtures: composed configs, a throwaway MLflow store, a real MLflow server, small training runs."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest

from helpers.servers import MlflowServer, start_mlflow_server
from helpers.stores import migrated_store
from mnist_np.common.paths import PROJECT_ROOT
from mnist_np.experiment.config.compose import compose

if TYPE_CHECKING:
    from helpers.postgres import PostgresCluster
    from helpers.slurm import SlurmCluster

TRAIN_SCRIPT = PROJECT_ROOT / "scripts" / "train.py"
PYTHON = sys.executable
# The fault marker, the `lost` fixture and docs/reliability.md (see tests/helpers/reliability.py).
pytest_plugins = ("helpers.reliability",)


def _project_files() -> set[Path]:
    """Where runs and searches land when nothing says otherwise: the project's outputs/ and its default stores."""
    return ({p for kind in ("runs", "sweeps") for p in (PROJECT_ROOT / "outputs" / kind).glob("*/*")}
            | {p for p in (PROJECT_ROOT / "mlflow.db", PROJECT_ROOT / "optuna.db") if p.exists()})


# Session fixtures that start a cluster of daemons: under pytest-xdist (`make test` runs the suite in as many
# processes as there are cores) every test that uses one runs in the same worker, so each starts once.
CLUSTERS = ("postgres", "slurm")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (it renames the grouped tests' ids)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep together, under pytest-xdist, the tests that share an expensive fixture: each is then built once."""
    for item in items:
        if set(CLUSTERS) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("clusters"))
        elif _uses_module_fixture(item):  # a server and a sweep for a whole module (tests/test_browser.py)
            item.add_marker(pytest.mark.xdist_group(f"module:{item.nodeid.split('::')[0]}"))


def _uses_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(defs[-1].scope == "module" for defs in info.name2fixturedefs.values() if defs)


@pytest.fixture(scope="session", autouse=True)
def outputs_stay_clean() -> Iterator[None]:
    """No test may leave a run or sweep dir in the project's own outputs/, or create its default stores (tmp dirs
    instead)."""
    before = _project_files()
    yield
    left = sorted(str(p.relative_to(PROJECT_ROOT)) for p in _project_files() - before)
    assert left == [], f"tests left files in the project's own places: {left}"


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    """A real MLflow store: a fresh SQLite file in a temp dir (artifacts beside it), migrated already
    (helpers.stores)."""
    return migrated_store(tmp_path / "mlruns" / "mlflow.db")


def small_overrides(tracking_uri: str, *extra: str) -> list[str]:
    """A run that takes seconds: 3,000 training images, 2 epochs, no progress bar."""
    return [
        f"mlflow.tracking_uri={tracking_uri}",
        "mlflow.experiment_name=tests",
        "data.train_limit=3000",
        "data.val_size=1000",
        "trainer.epochs=2",
        "trainer.progress=false",
        *extra,
    ]


@pytest.fixture
def small_cfg(tracking_uri: str):
    return compose(small_overrides(tracking_uri))


class LiveServer:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite store, proxied artifacts) that a test may kill and restart.

    :meth:`kill` is a SIGKILL to the server's process group, as a crash or
    the OOM killer would do; :meth:`restart` brings it back on the same port
    over the same store.
    """

    def __init__(self, root: Path, backend_store_uri: str | None = None) -> None:
        self.root = root
        self.backend_store_uri = backend_store_uri  # None: SQLite in root
        self.port: int | None = None
        self.server: MlflowServer = self._start()
        self.url = self.server.url
        self.port = int(self.url.rsplit(":", 1)[1])

    def _start(self) -> MlflowServer:
        if self.backend_store_uri is None and not (self.root / "mlflow.db").exists():
            migrated_store(self.root / "mlflow.db")  # the server would migrate a new file first (seconds)
        return start_mlflow_server(self.root, port=self.port, workers=1, backend_store_uri=self.backend_store_uri)

    def kill(self) -> None:
        os.killpg(self.server.process.pid, signal.SIGKILL)
        self.server.process.wait(timeout=30)

    def restart(self) -> None:
        self.server = self._start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A fresh MLflow server for one test, stopped (its whole process group) at teardown."""
    server = LiveServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        server.stop()


def mlflow_gaps(client, run_id: str, output_dir: Path) -> dict[str, int]:
    """What the MLflow run misses of what its output dir holds.

    ``metrics``: per-epoch values in ``metrics.jsonl`` and final values in
    ``summary.json`` with no ``(key, step)`` in MLflow; ``duplicates``: values
    MLflow holds more than once for one ``(key, step)``; ``files``: files of
    ``config/``, ``weights/``, ``plots/``, ``metrics.jsonl`` and ``summary.json``
    missing from the run's artifacts.
    """
    import json
    from collections import Counter

    wanted: set[tuple[str, int]] = set()
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    for m in lines:
        wanted |= {(k, int(m["epoch"])) for k, v in m.items() if k != "epoch" and v == v}
    summary = output_dir / "summary.json"
    if summary.exists():
        wanted |= {(k, len(lines)) for k, v in json.loads(summary.read_text())["metrics"].items() if v == v}
    logged: Counter[tuple[str, int]] = Counter()
    for key in {k for k, _ in wanted}:
        logged.update((key, m.step) for m in client.get_metric_history(run_id, key))

    def listing(path: str | None) -> set[str]:
        found = set()
        for f in client.list_artifacts(run_id, path):
            found |= listing(f.path) if f.is_dir else {f.path}
        return found

    local = {p.relative_to(output_dir).as_posix() for sub in ("config", "weights", "plots")
             for p in (output_dir / sub).rglob("*") if p.is_file()}
    local |= {name for name in ("metrics.jsonl", "summary.json") if (output_dir / name).exists()}
    return {
        "metrics": len(wanted - set(logged)),
        "duplicates": sum(n - 1 for n in logged.values() if n > 1),
        "files": len(local - listing(None)),
    }


def throwaway_cluster(helper: str) -> Iterator[Any]:
    """Start the cluster ``tests/helpers/<helper>.py`` makes, for as long as the caller yields it; stop it after.

    Skipped, with the helper's reason, where none can run here (``unavailable()``).
    """
    module = importlib.import_module(f"helpers.{helper}")
    reason = module.unavailable()
    if reason is not None:
        pytest.skip(reason)
    cluster = module.start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator["PostgresCluster"]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 for the session (skipped, with the reason, where none can run)."""
    yield from throwaway_cluster("postgres")


@pytest.fixture(scope="session")
def slurm() -> Iterator["SlurmCluster"]:
    """A throwaway one-node Slurm on 127.0.0.1 for the session, its clients reached through ``SLURM_CONF``
    (Debian's packages installed first where root may; skipped, with the reason, where none can run)."""
    yield from throwaway_cluster("slurm")
