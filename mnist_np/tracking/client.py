"""A client for one store: connecting, experiments, batched calls, and a server's refusals in one line."""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from mnist_np.tracking.conventions import MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH
from mnist_np.tracking.uris import HOST_REFUSED, TrackingUnavailable, artifact_location_for, check_server, is_server

# MLflow's HTTP client retries a failed request 7 times with exponential
# back-off (about 4 minutes per call) and waits up to 120 s for an answer. A
# training should not stall that long on a dead server: everything is in the
# journal anyway. Users who set these variables keep their values.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
MlflowError = mlflow.exceptions.MlflowException


def connect(tracking_uri: str) -> MlflowClient:
    """A client for ``tracking_uri``; a server must answer within seconds (:func:`check_server`)."""
    if is_server(tracking_uri):
        for key, value in HTTP_RETRY_DEFAULTS.items():
            os.environ.setdefault(key, value)
    check_server(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def refusal(error: Exception) -> str | None:
    """How a server with authentication turned a request down (one line), if that is what ``error`` is."""
    text = str(error)
    code = getattr(error, "error_code", "")
    if "Invalid Host header" in text:
        return HOST_REFUSED
    if code == "UNAUTHENTICATED" or "error code 401" in text:
        return ("refused the request (401: not authenticated); set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to a user of that server")
    if code == "PERMISSION_DENIED" or "error code 403" in text:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME", "(none)")
        return f"refused the request (403: user {user} lacks permission); ask its admin for EDIT on the experiment"
    return None


def guarded(tracking_uri: str, call: Callable[[], Any]) -> Any:
    """Make a call on which a run depends; a server's refusal (no or wrong credentials) becomes one clear line."""
    try:
        return call()
    except MlflowError as e:
        refused = refusal(e) if is_server(tracking_uri) else None
        if refused is None:
            raise
        raise TrackingUnavailable(f"MLflow server {tracking_uri} {refused}") from None


def experiment_id(client: MlflowClient, tracking_uri: str, name: str) -> str:
    """The id of experiment ``name``, created (artifacts beside a SQLite store) if it does not exist."""

    def get_or_create() -> str:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_location_for(tracking_uri))
        except MlflowError:
            # Another process created it between our look-up and create.
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    return guarded(tracking_uri, get_or_create)


def log_batches(
    client: MlflowClient, run_id: str, metrics: Sequence[Metric] = (), params: Sequence[Param] = (), tags: Sequence[RunTag] = ()
) -> None:
    """``log_batch`` in as many requests as MLflow's per-request limits need."""
    for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[i : i + MAX_PARAMS_PER_BATCH])
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])
    if tags:
        client.log_batch(run_id, tags=list(tags))
