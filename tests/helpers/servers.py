"""A real MLflow tracking server in a subprocess, for tests and scripts.

:func:`start_mlflow_server` runs the venv's ``mlflow server`` executable on
loopback with a throwaway store (SQLite ``mlflow.db`` plus a proxied
artifacts folder), waits until ``/health`` answers, and hands back an
:class:`MlflowServer` that stops it again. Runs then point at it with
``mlflow.tracking_uri=<server.url>``, exactly as users point runs at a
shared server.

This module never imports MLflow: it only starts the executable and speaks
HTTP to it, so MLflow stays the business of :mod:`mnist_np.tracking`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

LOOPBACK = "127.0.0.1"
# A cold `mlflow server` imports a lot and migrates a new SQLite file: ~5-15 s
# on a busy 2-core machine. The limit is generous so a loaded CI box still passes.
START_TIMEOUT_SECONDS = 120.0
JOB_EXECUTION = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"  # a test's environment may still set it


class ServerError(RuntimeError):
    """The MLflow server could not be started (the message carries its log's tail)."""


def mlflow_executable() -> str:
    """The ``mlflow`` command of the running interpreter's environment (the venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "mlflow"
    if beside.exists():
        return str(beside)
    found = shutil.which("mlflow")
    if found is None:
        raise ServerError("no `mlflow` executable beside the Python interpreter or on PATH (pip install mlflow)")
    return found


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    """True when ``<url>/health`` answers 200 (MLflow's liveness endpoint)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class MlflowServer:
    """A running ``mlflow server``; use it as a context manager or call :meth:`stop`."""

    url: str
    root: Path  # holds mlflow.db (unless the store is a database server), artifacts/ and server.log
    process: subprocess.Popen
    log_path: Path
    backend_store_uri: str

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, asked over the REST API (as the UI's URLs need it)."""
        query = urllib.parse.urlencode({"experiment_name": name})
        with urllib.request.urlopen(f"{self.url}/api/2.0/mlflow/experiments/get-by-name?{query}",
                                    timeout=30) as response:
            return str(json.load(response)["experiment"]["experiment_id"])

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's combined stdout/stderr (for error messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server and its worker processes (they share its process group)."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)

    def __enter__(self) -> "MlflowServer":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_mlflow_server(
    root: Path,
    host: str = LOOPBACK,
    port: int | None = None,
    workers: int = 1,
    timeout: float = START_TIMEOUT_SECONDS,
    extra_args: tuple[str, ...] = (),
    backend_store_uri: str | None = None,
) -> MlflowServer:
    """Start ``mlflow server`` over a store in ``root`` and wait until it is healthy.

    Args:
        root: folder for ``mlflow.db``, ``artifacts/`` (served through the
            server, so clients need no shared filesystem) and ``server.log``.
        host: interface to bind; loopback unless a test needs otherwise.
        port: a free port is picked when ``None``.
        workers: server worker processes; one is plenty for a test and
            spares the cores the trainings need.
        timeout: seconds to wait for ``/health``.
        extra_args: more ``mlflow server`` options.
        backend_store_uri: where runs are kept; ``None``: ``sqlite:///<root>/mlflow.db``
            (e.g. ``postgresql://...`` for a team's server).

    Raises:
        ServerError: the server exited or did not become healthy in time
            (the message ends with the tail of its log).
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    backend_store_uri = backend_store_uri or f"sqlite:///{root / 'mlflow.db'}"
    port = port or free_port(host)
    url = f"http://{host}:{port}"
    log_path = root / "server.log"
    cmd = [
        mlflow_executable(), "server",
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", str(root / "artifacts"),
        "--host", host, "--port", str(port), "--workers", str(workers),
        *extra_args,
    ]
    # MLflow 3's server also starts a job runner and task queues (for GenAI jobs, five processes that take
    # about 30 s of CPU in all); runs need none of it, and without it the server is up in a third of the time.
    env = {JOB_EXECUTION: "false", **os.environ}
    with log_path.open("wb") as log_file:
        # Own process group: stop() ends the server's workers with it.
        process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=root, start_new_session=True, env=env)
    server = MlflowServer(url=url, root=root, process=process, log_path=log_path, backend_store_uri=backend_store_uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"mlflow server exited with status {process.returncode}:\n{server.log_tail()}")
        if is_healthy(url):
            return server
        time.sleep(0.5)
    server.stop()
    raise ServerError(f"mlflow server at {url} not healthy after {timeout:.0f} s:\n{server.log_tail()}")
