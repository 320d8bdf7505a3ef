"""A throwaway PostgreSQL cluster for tests: ``initdb`` in a temp dir, its own port on 127.0.0.1.

The team recipe in docs/clusters.md puts a shared ``mlflow server``'s runs in
PostgreSQL; the tests run that recipe against a real server started here
from the machine's own PostgreSQL binaries (Debian's ``postgresql``
package). PostgreSQL refuses to run as root, so as root the cluster runs
as the package's ``postgres`` user; a test is skipped, with the reason,
where no binaries or no such user exist.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from helpers.servers import LOOPBACK, free_port

USER = "mlflow"  # the database role the MLflow server connects as (trust auth on loopback only)


def find_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest ``/usr/lib/postgresql/<v>/bin``."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent  # Debian links only initdb and pg_ctl into /usr/local/bin
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def unavailable() -> str | None:
    """Why no cluster can be started here (None: it can)."""
    if find_bindir() is None:
        return "no PostgreSQL binaries (initdb, pg_ctl): apt-get install postgresql (.ci/run does as root)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and no 'postgres' user to run PostgreSQL as (it refuses root)"
    return None


@dataclass
class PostgresCluster:
    """A running cluster; :meth:`create_database` gives each test its own database."""

    root: Path
    port: int
    bindir: Path

    def _run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120, check=True,
                              stdin=subprocess.DEVNULL)

    def create_database(self, name: str) -> str:
        """A new empty database; returns its SQLAlchemy URL (what ``mlflow server --backend-store-uri`` takes)."""
        self._run(str(self.bindir / "createdb"), "-h", LOOPBACK, "-p", str(self.port), "-U", USER, name)
        return f"postgresql://{USER}@{LOOPBACK}:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass  # already down
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> PostgresCluster:
    """``initdb`` a new cluster in a temp dir and start it on a free port, listening on 127.0.0.1 only.

    Raises:
        subprocess.CalledProcessError: initdb or pg_ctl failed (the error carries their output).
    """
    bindir = find_bindir()
    assert bindir is not None, unavailable()
    # Not under pytest's tmp dirs: those are root's alone, and the cluster may run as another user.
    root = Path(tempfile.mkdtemp(prefix="mnist-np-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = PostgresCluster(root, free_port(), bindir)
    cluster._run(str(bindir / "initdb"), "-D", str(root / "data"), "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync")
    options = f"-p {cluster.port} -k {root} -c listen_addresses={LOOPBACK} -c fsync=off -c full_page_writes=off"
    cluster._run(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"), "-o", options, "-w",
                 "start")
    return cluster
