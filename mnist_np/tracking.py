"""MLflow tracking: the one module of the package that talks to MLflow (besides pyfunc_model.py, the code packaged inside each logged model).

:class:`MlflowTracker` is a training callback. It opens a run, logs params,
tags and the dataset up front, one batch of metrics per epoch (step = epoch),
artifacts at the end, and always closes the run: FINISHED, FAILED (with a
``failure_reason`` tag) or KILLED on Ctrl-C -- never left RUNNING.

A server that is down when a run starts stops it at once (:func:`check_server`).
One that dies *during* a run never stops the training: with ``fail_soft`` on,
the first call that fails makes the tracker give up on MLflow for the rest of
the run (one warning), while every call keeps being written to the run's
journal, ``mlflow_journal.jsonl`` in its output dir. :mod:`mnist_np.sync`
replays the journal into MLflow later, uploading only what is missing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import mlflow
import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

PARENT_RUN_TAG = MLFLOW_PARENT_RUN_ID  # what makes the UI nest a run under its sweep
PROCESS_TAG = "process"  # host:pid:start of the process that owns a RUNNING run

from mnist_np.model import MLP
from mnist_np.training import FitResult, TrainSettings

log = logging.getLogger(__name__)

MAX_PARAMS_PER_BATCH = 100  # MLflow's limits for one log_batch call
MAX_METRICS_PER_BATCH = 1000
# Per-epoch metrics reach MLflow at most this late: one request per epoch
# costs a store transaction (tens of ms on SQLite), more than a short epoch.
# The journal and metrics.jsonl get every epoch at once.
EPOCH_METRICS_EVERY_SECONDS = 2.0
JOURNAL_FILE = "mlflow_journal.jsonl"  # in the output dir: every call the tracker made, in order
OFFLINE_TAG = "tracking_interrupted"  # when and why MLflow stopped answering during the run

# MLflow's HTTP client retries a failed request 7 times with exponential
# back-off (about 4 minutes per call) and waits up to 120 s for an answer. A
# training should not stall that long on a dead server: everything is in the
# journal anyway. Users who set these variables keep their values.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class TrackingUnavailable(RuntimeError):
    """The MLflow server named by the tracking URI does not answer, or refuses us (no or wrong credentials)."""


# MLflow's server answers 403 to a Host header it does not know (a guard against DNS rebinding).
HOST_REFUSED = "refused this host name (403: Invalid Host header); start the server with --allowed-hosts <host:port as clients write it>"


def error_line(e: BaseException) -> str:
    """An error as one line for a log, a tag or a terminal: its type, then its message's first line."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _refusal(error: Exception) -> str | None:
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


SERVER_PROBE_SECONDS = 5.0


def check_server(tracking_uri: str, timeout: float = SERVER_PROBE_SECONDS) -> None:
    """Fail within ``timeout`` seconds if an ``http(s)://`` tracking server does not answer.

    MLflow's client would otherwise retry with back-off for minutes before
    the first request fails; a run should learn at once, before training.
    """
    if not is_server(tracking_uri):
        return
    import urllib.error
    import urllib.request

    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read(64)
    except urllib.error.HTTPError as e:
        if e.code == 403 and b"Invalid Host header" in e.read(200):
            raise TrackingUnavailable(f"MLflow server {tracking_uri} {HOST_REFUSED}") from None
        if e.code in (401, 403):
            return  # a server with authentication: it is up; credentials are MLflow's business
        raise TrackingUnavailable(f"MLflow server {tracking_uri} answered {e.code} at /health; is it an MLflow server?") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingUnavailable(
            f"MLflow server {tracking_uri} is not reachable ({reason}); start it, or unset "
            "mlflow.tracking_uri / MLFLOW_TRACKING_URI to use the project's mlflow.db"
        ) from None


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def server_reachable(tracking_uri: str, timeout: float = 2.0) -> bool:
    """Whether the store can be reached now (always true for a database or file store)."""
    try:
        check_server(tracking_uri, timeout=timeout)
        return True
    except TrackingUnavailable:
        return False


def require_store(tracking_uri: str, wanted: str) -> None:
    """Refuse a SQLite store that does not exist, instead of letting MlflowClient create an empty one there."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix) and not Path(tracking_uri[len(prefix) :]).exists():
        raise ValueError(f"no MLflow store at {tracking_uri} (looking for {wanted})")


def default_tracking_uri(project_root: Path) -> str:
    """The project's store: SQLite ``mlflow.db`` at the project root (absolute)."""
    return f"sqlite:///{(project_root / 'mlflow.db').resolve()}"


def artifact_location_for(tracking_uri: str) -> str | None:
    """Artifacts of a SQLite store live beside the database in ``mlartifacts/``.

    Without this MLflow would put them under the current directory, which
    under Hydra is wherever the user happened to be. Servers choose their own.
    """
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        db = Path(tracking_uri[len(prefix) :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": "0.1"}`` (lists stay as one value)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = "null" if value is None else str(value)
    return flat


def run_output_dir(run_id: str, tracking_uri: str) -> Path:
    """The output dir a run recorded (tag ``hydra_output_dir``); a clear error for an unknown run."""
    require_store(tracking_uri, f"run {run_id!r}")
    try:
        run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ValueError(f"no run {run_id!r} in {tracking_uri}") from None
    if "hydra_output_dir" not in run.data.tags:
        raise ValueError(f"run {run_id} records no output dir (tag hydra_output_dir)")
    return Path(run.data.tags["hydra_output_dir"])


def fetch_run(run_id: str, tracking_uri: str, dest: Path, artifacts: tuple[str, ...] = ()) -> dict[str, Any]:
    """A run's tags, final metrics, per-step metric histories, and local copies of ``artifacts``.

    Returns ``{"tags", "metrics", "history": {name: {step: value}}, "files": {artifact: Path}, "status"}``.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ValueError(f"no run {run_id!r} in {tracking_uri}") from None
    history = {
        name: {m.step: m.value for m in client.get_metric_history(run_id, name)} for name in run.data.metrics
    }
    files = {}
    dest.mkdir(parents=True, exist_ok=True)
    for path in artifacts:
        try:
            files[path] = Path(client.download_artifacts(run_id, path, str(dest)))
        except (mlflow.exceptions.MlflowException, OSError):
            raise ValueError(f"run {run_id} has no artifact {path}") from None
    return {"tags": dict(run.data.tags), "metrics": dict(run.data.metrics), "history": history, "files": files, "status": run.info.status}


def search_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> list[dict[str, Any]]:
    """Runs as plain dicts with keys ``run_id, name, status, params, metrics, tags``."""
    runs = client.search_runs(experiment_ids, filter_string=filter_string, max_results=10_000)
    return [
        {
            "run_id": r.info.run_id,
            "name": r.info.run_name,
            "status": r.info.status,
            "params": dict(r.data.params),
            "metrics": dict(r.data.metrics),
            "tags": dict(r.data.tags),
        }
        for r in runs
    ]


def runs_to_compare(tracking_uri: str, target: str) -> tuple[str, list[dict[str, Any]]]:
    """The runs ``scripts/compare.py`` shows: an experiment's trainings (sweep parents left out),
    or a sweep parent's members. Returns a title and the runs."""
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(target)
    if exp is not None:
        runs = [r for r in search_runs(client, [exp.experiment_id]) if "sweep_dir" not in r["tags"]]
        return f"experiment {target!r}", runs
    try:
        parent = client.get_run(target)
    except mlflow.exceptions.MlflowException:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"{target!r} is neither an experiment ({', '.join(names) or 'none'}) nor a run in {tracking_uri}") from None
    runs = search_runs(client, [parent.info.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{target}'")
    return f"sweep {parent.info.run_name!r}", runs


class MlflowTracker:
    """One MLflow run, driven by the training loop's events.

    With a ``journal`` every call is first appended to that file (JSON lines),
    so the output dir holds all the run sent, whether MLflow got it or not.
    With ``fail_soft`` set (the runner sets it once the run exists), a failing
    call is logged and skipped instead of raised; if the server no longer
    answers at all the tracker goes offline: one warning, and from then on
    calls only go to the journal (see :mod:`mnist_np.sync`).
    """

    def __init__(self, tracking_uri: str, experiment_name: str, run_id: str | None = None, journal: Path | None = None) -> None:
        """Connect to the store (creating and migrating it on first use) and the experiment.

        ``run_id`` attaches to an existing run instead of starting one.
        """
        self.tracking_uri = tracking_uri
        if is_server(tracking_uri):
            for key, value in HTTP_RETRY_DEFAULTS.items():
                os.environ.setdefault(key, value)
        check_server(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_name = experiment_name
        self.experiment_id = self._guard(lambda: self._experiment(experiment_name))
        self.run_id = run_id
        self.skip_steps: set[int] = set()
        self._pending: list[Metric] = []  # epoch metrics journaled but not sent yet
        self._last_sent = -float("inf")
        self.journal = journal
        self.fail_soft = False
        self.offline: str | None = None  # why MLflow was given up on, once it was
        self.failures: list[str] = []  # calls the server refused while it was up

    def _guard(self, call: Callable[[], Any]) -> Any:
        """Make a call on which the run depends; a server's refusal (no or wrong credentials) becomes one clear line."""
        try:
            return call()
        except mlflow.exceptions.MlflowException as e:
            refused = _refusal(e) if is_server(self.tracking_uri) else None
            if refused is None:
                raise
            raise TrackingUnavailable(f"MLflow server {self.tracking_uri} {refused}") from None

    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location_for(self.tracking_uri))
        except mlflow.exceptions.MlflowException:
            # Another process created it between our look-up and create.
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    # -- the journal and fail-soft sending ---------------------------------
    def _note(self, op: str, **fields: Any) -> None:
        """Append one call to the journal (before it is sent: the journal is the truth)."""
        if self.journal is None:
            return
        with self.journal.open("a") as f:
            f.write(json.dumps({"op": op, **fields}) + "\n")

    def _local(self, path: Path) -> str:
        """A path as the journal stores it: relative to the output dir when inside it (dirs get moved)."""
        path = Path(path).resolve()
        if self.journal is not None and path.is_relative_to(self.journal.parent.resolve()):
            return str(path.relative_to(self.journal.parent.resolve()))
        return str(path)

    def _send(self, what: str, call: Callable[[], Any]) -> bool:
        """Make one MLflow call; in fail-soft mode a failure is logged, never raised. True if it went through."""
        if self.offline is not None:
            return False
        try:
            call()
            return True
        except Exception as e:
            if not self.fail_soft:
                raise
            error = f"{what}: {error_line(e)}"[:2000]
            where = self.journal.parent if self.journal is not None else "the output dir"
            if server_reachable(self.tracking_uri):
                log.warning("MLflow refused %s (it stays in %s)", error, where)
                self.failures.append(error)
                return False
            self.offline = error
            log.warning(
                "MLflow at %s stopped answering (%s); training goes on and everything stays in %s -- "
                "upload it later with: python scripts/sync.py %s", self.tracking_uri, error, where, where,
            )
            self._note("tags", tags={OFFLINE_TAG: f"{time.strftime('%Y-%m-%d %H:%M:%S')} {error}"})
            return False

    # -- the run -------------------------------------------------------------
    def start(self, run_name: str, params: Mapping[str, str], tags: Mapping[str, str], start_time: int | None = None) -> str:
        """Create the run with its params and tags; returns the run id."""
        tags = {MLFLOW_RUN_NAME: run_name, **tags}
        self._note("start", run_name=run_name, params=dict(params), tags=dict(tags), experiment_name=self.experiment_name,
                   tracking_uri=self.tracking_uri, start_time=start_time or int(time.time() * 1000))
        run = self._guard(lambda: self.client.create_run(self.experiment_id, run_name=run_name, tags=tags, start_time=start_time))
        self.run_id = run.info.run_id
        self.log_params(params)
        return self.run_id

    def log_params(self, params: Mapping[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self._id, params=items[i : i + MAX_PARAMS_PER_BATCH])

    @property
    def _id(self) -> str:
        if self.run_id is None:
            raise RuntimeError("the run has not been started")
        return self.run_id

    def log_dataset(self, name: str, digest: str, source: str, sizes: Mapping[str, int], context: str = "training") -> bool:
        """Record the data as an MLflow dataset input: name, digest of the pinned files, split sizes."""
        self._note("dataset", name=name, digest=digest, source=source, sizes=dict(sizes), context=context)
        return self._send("the dataset", lambda: self._log_dataset(name, digest, source, sizes, context))

    def _log_dataset(self, name: str, digest: str, source: str, sizes: Mapping[str, int], context: str) -> None:
        profile = "{" + ", ".join(f'"{k}": {v}' for k, v in sizes.items()) + "}"
        dataset = Dataset(name=name, digest=digest, source_type="local", source=source, profile=profile)
        inputs = [DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])]
        for attempt in range(3):
            try:
                self.client.log_inputs(self._id, datasets=inputs)
                return
            except mlflow.exceptions.MlflowException as e:
                # Parallel sweep members insert the same dataset row at once; the
                # store checks, then inserts, so the loser sees a UNIQUE violation.
                # Retrying links the row the winner created.
                if "UNIQUE" not in str(e) or attempt == 2:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = None, timestamp: int | None = None, defer: bool = False
    ) -> bool:
        """All of ``metrics`` in one call (one request against a server).

        ``defer``: journal them now but send them with the next batch, at
        most ``EPOCH_METRICS_EVERY_SECONDS`` later (see :meth:`flush_metrics`).
        """
        now = timestamp or int(time.time() * 1000)
        self._note("metrics", step=step or 0, timestamp=now, metrics={k: float(v) for k, v in metrics.items()})
        self._pending += [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if defer and time.monotonic() - self._last_sent < EPOCH_METRICS_EVERY_SECONDS:
            return True
        return self.flush_metrics()

    def flush_metrics(self) -> bool:
        """Send the metrics held back by ``log_metrics(defer=True)``, in one request per 1000."""
        batch, self._pending = self._pending, []
        self._last_sent = time.monotonic()
        if not batch:
            return True
        steps = f"steps {batch[0].step}-{batch[-1].step}" if batch[0].step != batch[-1].step else f"step {batch[0].step}"

        def send() -> None:
            for i in range(0, len(batch), MAX_METRICS_PER_BATCH):
                self.client.log_batch(self._id, metrics=batch[i : i + MAX_METRICS_PER_BATCH])

        return self._send(f"metrics at {steps}", send)

    def log_metric_values(self, values: list[tuple[str, float, int, int]]) -> None:
        """``(key, value, timestamp, step)`` tuples, batched (for replaying a journal; not journaled)."""
        items = [Metric(k, v, ts, step) for k, v, ts, step in values]
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self._id, metrics=items[i : i + MAX_METRICS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> bool:
        self._note("tags", tags={k: str(v) for k, v in tags.items()})
        return self._send("tags", lambda: self.client.log_batch(self._id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def delete_tag(self, key: str) -> None:
        self.client.delete_tag(self._id, key)

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> bool:
        self._note("artifacts", path=self._local(local_dir), artifact_path=artifact_path)
        return self._send(f"{local_dir.name}/", lambda: self.client.log_artifacts(self._id, str(local_dir), artifact_path))

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> bool:
        self._note("artifacts", path=self._local(local_path), artifact_path=artifact_path)
        return self._send(local_path.name, lambda: self.client.log_artifact(self._id, str(local_path), artifact_path))

    def log_model(self, weights_path: Path, input_example: np.ndarray) -> bool:
        """The weights as the run's MLflow model (see :func:`log_pyfunc_model`)."""
        # The example is a few [0, 1] images: as bytes (x 255) it fits a journal line.
        example = np.rint(np.asarray(input_example, dtype=np.float64) * 255).clip(0, 255).astype(np.uint8)
        self._note("model", weights=self._local(weights_path), example=example.tolist())
        return self._send("the model", lambda: log_pyfunc_model(self._id, self.tracking_uri, weights_path, input_example))

    def end(self, status: str = "FINISHED", reason: str | None = None) -> bool:
        """Close the run with ``status`` (FINISHED, FAILED, KILLED) and, if given, the reason."""
        if self.run_id is None:
            return False
        reason = reason[:8000] if reason else None  # MLflow caps tag values at 8000 characters
        self.flush_metrics()
        now = int(time.time() * 1000)
        self._note("end", status=status, reason=reason, end_time=now)
        return self._send(f"the final status {status}", lambda: self.set_status(status, reason, now))

    def set_status(self, status: str, reason: str | None = None, end_time: int | None = None) -> None:
        if reason:
            self.client.set_tag(self._id, "failure_reason", reason)
        self.client.set_terminated(self._id, status=RunStatus.to_string(RunStatus.from_string(status)), end_time=end_time)

    def status(self) -> str:
        """The run's status (RUNNING, FINISHED, FAILED, KILLED)."""
        return self.client.get_run(self._id).info.status

    def reopen(self, tags: Mapping[str, str]) -> None:
        """Mark an interrupted run RUNNING again (to resume it) and drop its old failure reason."""
        self._note("reopen", tags={k: str(v) for k, v in tags.items()})
        self.client.update_run(self._id, status="RUNNING")
        try:
            self.client.delete_tag(self._id, "failure_reason")
        except mlflow.exceptions.MlflowException:
            pass  # there was none
        self.client.log_batch(self._id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def reconcile_epochs(self, history: list[dict[str, float]], probe: str = "train_loss") -> None:
        """Make MLflow hold exactly epochs 1..len(history) of a resumed run, each once.

        Epochs in ``history`` that never reached MLflow are logged now; epochs
        MLflow already has past it will be re-run and are not logged again.
        """
        logged = {m.step for m in self.client.get_metric_history(self._id, probe)}
        for epoch, metrics in enumerate(history, start=1):
            if epoch not in logged:
                self.log_metrics({k: v for k, v in metrics.items() if v == v}, step=epoch)
        self.skip_steps = {step for step in logged if step > len(history)}

    def latest_metrics(self) -> dict[str, float]:
        """The latest value of each of the run's metrics."""
        return dict(self.client.get_run(self._id).data.metrics)

    def remote(self) -> dict[str, Any] | None:
        """What MLflow holds of this run, as plain data; ``None`` if there is no such run.

        Keys: ``status, params, tags, metrics`` (latest values), ``steps``
        (every logged ``(key, step)``), ``files`` (artifact path -> size),
        ``digests`` (dataset inputs), ``models`` (logged model outputs).
        """
        try:
            run = self.client.get_run(self._id)
        except mlflow.exceptions.MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        steps = {(key, m.step) for key in run.data.metrics for m in self.client.get_metric_history(self._id, key)}
        return {
            "status": run.info.status,
            "params": dict(run.data.params),
            "tags": dict(run.data.tags),
            "metrics": dict(run.data.metrics),
            "steps": steps,
            "files": self._files(None),
            "digests": {d.dataset.digest for d in run.inputs.dataset_inputs} if run.inputs else set(),
            "models": len(run.outputs.model_outputs) if run.outputs else 0,
        }

    def _files(self, path: str | None) -> dict[str, int]:
        found: dict[str, int] = {}
        for f in self.client.list_artifacts(self._id, path):
            if f.is_dir:
                found.update(self._files(f.path))
            else:
                found[f.path] = f.file_size or 0
        return found

    def child_runs(self) -> list[dict[str, Any]]:
        """Runs whose ``mlflow.parentRunId`` is this run, as plain dicts (see :func:`search_runs`)."""
        return search_runs(self.client, [self.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self._id}'")

    def close_other(self, run_id: str, status: str, reason: str) -> None:
        """End someone else's run (a sweep member whose process died) with a reason."""
        self.client.set_tag(run_id, "failure_reason", reason[:8000])
        self.client.set_terminated(run_id, status=status)

    def reap_dead_runs(self, reason: str) -> list[str]:
        """Close (FAILED, with ``reason``) every RUNNING run of the experiment whose process is gone.

        Runs carry a ``process`` tag (see :mod:`mnist_np.procs`); runs of other
        hosts, or without the tag, are left alone.
        """
        from mnist_np.procs import is_dead

        running = self.client.search_runs([self.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
        reaped = []
        for r in running:
            ident = r.data.tags.get(PROCESS_TAG)
            if ident and r.info.run_id != self.run_id and is_dead(ident):
                try:
                    self.close_other(r.info.run_id, "FAILED", f"{reason} (process {ident} is gone)")
                except mlflow.exceptions.MlflowException as e:
                    if _refusal(e) is None:
                        raise
                    continue  # another user's run on a server with logins: theirs to close
                reaped.append(r.info.run_id)
        return reaped

    # -- training callback -------------------------------------------------
    def on_train_start(self, model: MLP, settings: TrainSettings) -> None:
        pass

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model: MLP, is_best: bool) -> None:
        if epoch in self.skip_steps:
            return  # logged before an interruption; the re-run gave the same values
        finite = {k: v for k, v in metrics.items() if v == v}  # MLflow rejects NaN from some stores
        self.log_metrics(finite, step=epoch, defer=True)

    def on_train_end(self, result: FitResult) -> None:
        self.flush_metrics()


# ---------------------------------------------------------------------------
# The trained network as an MLflow model, and weights by run id

PYFUNC_MODEL_NAME = "model"  # runs:/<run id>/model
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")  # logged as the model's code


def _pyfunc_requirements() -> list[str]:
    """Exact pins of what the packaged model code imports (the model needs nothing else)."""
    from importlib import metadata

    reqs = []
    for dist in ("mlflow", "numpy", "pandas", "PyYAML"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:  # e.g. only mlflow-skinny installed
            reqs.append(dist)
    return reqs


@contextlib.contextmanager
def _requirements_trusted() -> Iterator[None]:
    """Skip MLflow's check of the model's requirements against the installed packages.

    Ours are pinned from the installed versions (:func:`_pyfunc_requirements`),
    so they always match; the check scans every installed distribution's
    file list and costs more than half a second per run. Where a future
    MLflow lacks the hook, the check simply runs.
    """
    import mlflow.utils.environment as environment

    name = "warn_dependency_requirement_mismatches"
    if not hasattr(environment, name):
        yield
        return
    original = getattr(environment, name)
    setattr(environment, name, lambda requirements: None)
    try:
        yield
    finally:
        setattr(environment, name, original)


def log_pyfunc_model(client_run_id: str, tracking_uri: str, weights_path: Path, input_example: np.ndarray) -> str:
    """Log the weights file as an MLflow pyfunc model named ``model`` of run ``client_run_id``.

    The model is ``mnist_np/pyfunc_model.py`` ("models from code": a
    self-contained NumPy forward pass) plus the ``.npz`` as its ``weights``
    artifact, with a signature inferred from ``input_example`` and the model's
    own output on it. It becomes an MLflow 3 logged model linked to the run,
    so ``runs:/<run id>/model`` and ``models:/<model id>`` both load it.

    Only client calls with an explicit store are used -- no fluent
    ``start_run`` (which would set a RUNNING run FINISHED on exit) and no
    global tracking URI or experiment -- so the run's status is untouched
    and this works from inside a run that is still going.

    Args:
        client_run_id: the run to attach the model to (any status).
        tracking_uri: its store.
        weights_path: a weights ``.npz`` (``W1, b1, ...`` and ``config``).
        input_example: a few inputs ``(n, 784)`` in [0, 1]; stored as the
            example and cast to float32, the signature's input type (the
            model casts to its weights' dtype itself).

    Returns:
        ``runs:/<run id>/model``.
    """
    import tempfile
    import warnings

    import mlflow.pyfunc
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model, infer_signature
    from mlflow.pyfunc import PythonModelContext

    from mnist_np.pyfunc_model import WEIGHTS_ARTIFACT, MnistNpModel

    weights_path = Path(weights_path).resolve()
    example = np.ascontiguousarray(input_example, dtype=np.float32)
    if example.ndim != 2 or len(example) == 0:
        raise ValueError(f"input_example must be (n, 784) with n >= 1, got shape {example.shape}")
    artifacts = {WEIGHTS_ARTIFACT: str(weights_path)}
    # The signature's output side comes from the packaged model class itself,
    # so it describes exactly what serving returns.
    probe = MnistNpModel()
    probe.load_context(PythonModelContext(artifacts=artifacts, model_config=None))
    with warnings.catch_warnings():
        # MLflow warns that an int column cannot hold missing values; a label is never missing.
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        signature = infer_signature(example, probe.predict(None, example))

    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(client_run_id)
    model = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=PYFUNC_MODEL_NAME,
        source_run_id=client_run_id,
        params=dict(run.data.params),  # as mlflow's own log_model does: the run's config, searchable on the model
    )
    try:
        with tempfile.TemporaryDirectory(prefix="mnist-np-model-") as tmp, _requirements_trusted():
            local = Path(tmp) / PYFUNC_MODEL_NAME
            mlflow.pyfunc.save_model(
                path=str(local),
                python_model=str(PYFUNC_CODE),
                artifacts=artifacts,
                signature=signature,
                input_example=example,
                pip_requirements=_pyfunc_requirements(),
                # MLmodel records which run and logged model it belongs to.
                mlflow_model=Model(artifact_path=model.artifact_location, run_id=client_run_id,
                                   model_uuid=model.model_id, model_id=model.model_id),
            )
            client.log_model_artifacts(model.model_id, str(local))
        client.log_outputs(client_run_id, models=[LoggedModelOutput(model.model_id, step=0)])
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    except BaseException:
        try:  # never leave a PENDING model behind; the original error is what matters
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        except Exception:
            log.warning("could not mark logged model %s FAILED", model.model_id)
        raise
    return f"runs:/{client_run_id}/{PYFUNC_MODEL_NAME}"


def resolve_weights(run_id_or_path: str, tracking_uri: str | None, which: str = "final", dst_dir: Path | None = None) -> Path:
    """A local weights file: ``run_id_or_path`` itself if it is a file, else the run's ``weights/{which}.npz``.

    Args:
        run_id_or_path: a ``.npz`` path or an MLflow run id.
        tracking_uri: the store for a run id; ``None``: ``$MLFLOW_TRACKING_URI``,
            else the project's default store.
        which: ``final`` or ``best``.
        dst_dir: where a downloaded file goes (default: a new temp dir; a
            file-based store may hand back its own path without copying).

    Raises:
        ValueError: one line -- a bad ``which``, a missing file, a missing
        store, an unknown run, or a run without that weights file.
    """
    import tempfile

    if which not in ("final", "best"):
        raise ValueError(f"which={which!r}; expected final or best")
    path = Path(run_id_or_path)
    if path.is_file():
        return path
    if path.suffix == ".npz" or os.sep in run_id_or_path:
        raise ValueError(f"{run_id_or_path}: no such file")
    from mnist_np.config import PROJECT_ROOT

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(PROJECT_ROOT)
    require_store(uri, f"run {run_id_or_path!r}")
    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_run(run_id_or_path)
    except mlflow.exceptions.MlflowException:
        raise ValueError(f"no run {run_id_or_path!r} in {uri}, and no such file") from None
    dst = dst_dir if dst_dir is not None else Path(tempfile.mkdtemp(prefix="mnist-np-weights-"))
    try:
        return Path(client.download_artifacts(run_id_or_path, f"weights/{which}.npz", str(dst)))
    except (mlflow.exceptions.MlflowException, OSError):
        raise ValueError(f"run {run_id_or_path} has no artifact weights/{which}.npz") from None
