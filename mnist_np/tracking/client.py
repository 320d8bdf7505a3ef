"""A client for one store: connecting, experiments, batched calls, and what an error means (a refusal, a lost race)."""

from __future__ import annotations

import os
import re
import sqlite3
from typing import Any, Callable, Iterator, Sequence

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import RestException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import IntegrityError

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

# A unique violation, as each database's driver types it: PostgreSQL's SQLSTATE (psycopg 3 ``sqlstate``,
# psycopg2 ``pgcode``) and SQLite's extended result codes (a composite primary key, like MLflow's
# ``dataset_pk``, fails as PRIMARYKEY, a unique index as UNIQUE).
UNIQUE_SQLSTATE = "23505"
SQLITE_UNIQUE_CODES = frozenset({sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY})
# What MLflow's SQL store makes of every SQLAlchemy error but a lost connection (mlflow/store/db/utils.py).
STORE_ERROR_CODE = "BAD_REQUEST"
# SQLAlchemy opens a database error's message with the driver's exception class, "(<module>.<class>) ...".
DBAPI_CLASS = re.compile(r"\((?P<name>[A-Za-z_][\w.]*)\) ")
# Driver classes that mean a unique violation. psycopg and psycopg2 give each SQLSTATE its own class (23505 is
# UniqueViolation). SQLite's driver has one class for every constraint, and its extended code is not in the
# message: a NOT NULL or foreign-key failure reads the same there, so a caller that retries tries those twice more.
UNIQUE_DBAPI_CLASSES = frozenset({"psycopg.errors.UniqueViolation", "psycopg2.errors.UniqueViolation",
                                  "sqlite3.IntegrityError"})


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


def unique_violation(error: BaseException) -> bool:
    """Whether ``error`` is the store refusing a row that another writer inserted first (a unique violation).

    Such a race is lost, not an error: the row now exists, and the same call again links it. Recognised by
    type, never by a database's wording (SQLite says "UNIQUE constraint failed", PostgreSQL "duplicate key
    value violates unique constraint"). Against a local store (``sqlite:///``, ``postgresql://``) MLflow raises
    its own exception *from* SQLAlchemy's ``IntegrityError``, whose ``orig`` is the driver's error with its
    code. Through an ``mlflow server`` only JSON survives: error code BAD_REQUEST and SQLAlchemy's message, which
    names the driver's exception class; its ``sqlstate`` field is MLflow's own classification, not the database's.
    """
    integrity = next((e for e in _chain(error) if isinstance(e, IntegrityError)), None)
    if integrity is not None:
        driver_error = integrity.orig
        sqlstate = getattr(driver_error, "sqlstate", None) or getattr(driver_error, "pgcode", None)
        return sqlstate == UNIQUE_SQLSTATE or getattr(driver_error, "sqlite_errorcode", None) in SQLITE_UNIQUE_CODES
    if not isinstance(error, MlflowError) or error.error_code != STORE_ERROR_CODE:
        return False
    json = error.json if isinstance(error, RestException) and isinstance(error.json, dict) else {}
    driver_class = DBAPI_CLASS.match(str(json.get("message", error.message)))
    return driver_class is not None and driver_class["name"] in UNIQUE_DBAPI_CLASSES


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or while handling, innermost last."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


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
    client: MlflowClient, run_id: str, metrics: Sequence[Metric] = (), params: Sequence[Param] = (),
    tags: Sequence[RunTag] = ()
) -> None:
    """``log_batch`` in as many requests as MLflow's per-request limits need."""
    for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[i : i + MAX_PARAMS_PER_BATCH])
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])
    if tags:
        client.log_batch(run_id, tags=list(tags))
