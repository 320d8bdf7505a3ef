"""Tracking URIs: the project's default store, where its artifacts go, and whether a server answers.

No MLflow import here: a dead server is found within seconds with plain
HTTP, before MLflow's client would retry for minutes.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from mnist_np.common.paths import PROJECT_ROOT

SERVER_PROBE_SECONDS = 5.0
SQLITE = "sqlite:///"
# MLflow's server answers 403 to a Host header it does not know (a guard against DNS rebinding).
HOST_REFUSED = ("refused this host name (403: Invalid Host header); "
                "start the server with --allowed-hosts <host:port as clients write it>")


class TrackingUnavailable(RuntimeError):
    """The MLflow server named by the tracking URI does not answer, or refuses us (no or wrong credentials)."""


def default_tracking_uri(project_root: Path = PROJECT_ROOT) -> str:
    """The project's store: SQLite ``mlflow.db`` at the project root (absolute)."""
    return f"{SQLITE}{(project_root / 'mlflow.db').resolve()}"


def tracking_uri_or_default(uri: str | None = None) -> str:
    """``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else the project's ``mlflow.db`` (what every command uses)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def artifact_location_for(tracking_uri: str) -> str | None:
    """Artifacts of a SQLite store live beside the database in ``mlartifacts/``.

    Without this MLflow would put them under the current directory, which
    under Hydra is wherever the user happened to be. Servers choose their own.
    """
    if tracking_uri.startswith(SQLITE):
        db = Path(tracking_uri[len(SQLITE) :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def require_store(tracking_uri: str, wanted: str) -> None:
    """Refuse a SQLite store that does not exist, instead of letting MLflow create an empty one there."""
    if tracking_uri.startswith(SQLITE) and not Path(tracking_uri[len(SQLITE) :]).exists():
        raise ValueError(f"no MLflow store at {tracking_uri} (looking for {wanted})")


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def check_server(tracking_uri: str, timeout: float = SERVER_PROBE_SECONDS) -> None:
    """Fail within ``timeout`` seconds if an ``http(s)://`` tracking server does not answer.

    MLflow's client would otherwise retry with back-off for minutes before
    the first request fails; a run should learn at once, before training.

    Raises:
        TrackingUnavailable: one line naming the server and what to do.
    """
    if not is_server(tracking_uri):
        return
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read(64)
    except urllib.error.HTTPError as e:
        if e.code == 403 and b"Invalid Host header" in e.read(200):
            raise TrackingUnavailable(f"MLflow server {tracking_uri} {HOST_REFUSED}") from None
        if e.code in (401, 403):
            return  # a server with authentication: it is up; credentials are MLflow's business
        raise TrackingUnavailable(f"MLflow server {tracking_uri} answered {e.code} at /health; "
                                  "is it an MLflow server?") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingUnavailable(
            f"MLflow server {tracking_uri} is not reachable ({reason}); start it, or unset "
            "mlflow.tracking_uri / MLFLOW_TRACKING_URI to use the project's mlflow.db"
        ) from None


def server_reachable(tracking_uri: str, timeout: float = 2.0) -> bool:
    """Whether the store can be reached now (always true for a database or file store)."""
    try:
        check_server(tracking_uri, timeout=timeout)
        return True
    except TrackingUnavailable:
        return False


def how_to_see(tracking_uri: str, experiment_id: str, run_id: str, project_root: Path = PROJECT_ROOT) -> str:
    """How a user opens a run: its URL on a server, ``make ui`` for the project's store, else ``mlflow ui`` on the
    store."""
    if is_server(tracking_uri):
        return f"see it at {tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    if tracking_uri == default_tracking_uri(project_root):
        return "see it with: make ui"
    return f"see it with: mlflow ui --backend-store-uri {tracking_uri}"
