"""MLflow tracking: the one module of the package that talks to MLflow (besides pyfunc_model.py, the code packaged inside each logged model).

:class:`MlflowTracker` is a training callback. It opens a run, logs params,
tags and the dataset up front, one batch of metrics per epoch (step = epoch),
artifacts at the end, and always closes the run: FINISHED, FAILED (with a
``failure_reason`` tag) or KILLED on Ctrl-C -- never left RUNNING.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

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

MAX_PARAMS_PER_BATCH = 100  # MLflow's limit for one log_batch call


class TrackingUnavailable(RuntimeError):
    """The MLflow server named by the tracking URI does not answer."""


SERVER_PROBE_SECONDS = 5.0


def check_server(tracking_uri: str, timeout: float = SERVER_PROBE_SECONDS) -> None:
    """Fail within ``timeout`` seconds if an ``http(s)://`` tracking server does not answer.

    MLflow's client would otherwise retry with back-off for minutes before
    the first request fails; a run should learn at once, before training.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read(64)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            return  # a server with authentication: it is up; credentials are MLflow's business
        raise TrackingUnavailable(f"MLflow server {tracking_uri} answered {e.code} at /health; is it an MLflow server?") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingUnavailable(
            f"MLflow server {tracking_uri} is not reachable ({reason}); start it, or unset "
            "mlflow.tracking_uri / MLFLOW_TRACKING_URI to use the project's mlflow.db"
        ) from None


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
    try:
        run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ValueError(f"no run {run_id!r} in {tracking_uri} (pass a run id from that store, or an output dir)") from None
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
    """One MLflow run, driven by the training loop's events."""

    def __init__(self, tracking_uri: str, experiment_name: str, run_id: str | None = None) -> None:
        """Connect to the store (creating and migrating it on first use) and the experiment.

        ``run_id`` attaches to an existing run instead of starting one.
        """
        self.tracking_uri = tracking_uri
        check_server(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment(experiment_name)
        self.run_id = run_id
        self.skip_steps: set[int] = set()

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

    def start(self, run_name: str, params: Mapping[str, str], tags: Mapping[str, str]) -> str:
        """Create the run with its params and tags; returns the run id."""
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={MLFLOW_RUN_NAME: run_name, **tags})
        self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS_PER_BATCH])
        return self.run_id

    @property
    def _id(self) -> str:
        if self.run_id is None:
            raise RuntimeError("the run has not been started")
        return self.run_id

    def log_dataset(self, name: str, digest: str, source: str, sizes: Mapping[str, int], context: str = "training") -> None:
        """Record the data as an MLflow dataset input: name, digest of the pinned files, split sizes."""
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

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """All of ``metrics`` in one call (one request against a server)."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self._id, metrics=batch)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self._id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self._id, str(local_dir), artifact_path)

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self._id, str(local_path), artifact_path)

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Close the run with ``status`` (FINISHED, FAILED, KILLED) and, if given, the reason."""
        if self.run_id is None:
            return
        if reason:
            # MLflow caps tag values at 8000 characters.
            self.set_tags({"failure_reason": reason[:8000]})
        self.client.set_terminated(self.run_id, status=RunStatus.to_string(RunStatus.from_string(status)))

    def status(self) -> str:
        """The run's status (RUNNING, FINISHED, FAILED, KILLED)."""
        return self.client.get_run(self._id).info.status

    def reopen(self, tags: Mapping[str, str]) -> None:
        """Mark an interrupted run RUNNING again (to resume it) and drop its old failure reason."""
        self.client.update_run(self._id, status="RUNNING")
        try:
            self.client.delete_tag(self._id, "failure_reason")
        except mlflow.exceptions.MlflowException:
            pass  # there was none
        self.set_tags(tags)

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
                self.close_other(r.info.run_id, "FAILED", f"{reason} (process {ident} is gone)")
                reaped.append(r.info.run_id)
        return reaped

    # -- training callback -------------------------------------------------
    def on_train_start(self, model: MLP, settings: TrainSettings) -> None:
        pass

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model: MLP, is_best: bool) -> None:
        if epoch in self.skip_steps:
            return  # logged before an interruption; the re-run gave the same values
        finite = {k: v for k, v in metrics.items() if v == v}  # MLflow rejects NaN from some stores
        try:
            self.log_metrics(finite, step=epoch)
        except Exception as e:  # a tracking hiccup must not stop a training
            log.warning("could not log epoch %d metrics to MLflow: %s", epoch, e)

    def on_train_end(self, result: FitResult) -> None:
        pass


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
        with tempfile.TemporaryDirectory(prefix="mnist-np-model-") as tmp:
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
    import os
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
    # MlflowClient would create (and migrate) an empty database at a wrong path.
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        raise ValueError(f"no MLflow store at {uri} (looking for run {run_id_or_path!r})")
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
