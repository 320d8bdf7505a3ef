"""MLflow tracking: the only module that imports mlflow.

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
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

PARENT_RUN_TAG = MLFLOW_PARENT_RUN_ID  # what makes the UI nest a run under its sweep
PROCESS_TAG = "process"  # host:pid:start of the process that owns a RUNNING run

from mnist_np.model import MLP
from mnist_np.training import FitResult, TrainSettings

log = logging.getLogger(__name__)

MAX_PARAMS_PER_BATCH = 100  # MLflow's limit for one log_batch call


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


class MlflowTracker:
    """One MLflow run, driven by the training loop's events."""

    def __init__(self, tracking_uri: str, experiment_name: str, run_id: str | None = None) -> None:
        """Connect to the store (creating and migrating it on first use) and the experiment.

        ``run_id`` attaches to an existing run instead of starting one.
        """
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment(experiment_name)
        self.run_id = run_id

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

    def child_runs(self) -> list[dict[str, Any]]:
        """Runs whose ``mlflow.parentRunId`` is this run, as plain dicts.

        Keys: ``run_id, name, status, params, metrics, tags``.
        """
        query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self._id}'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=10_000)
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
        finite = {k: v for k, v in metrics.items() if v == v}  # MLflow rejects NaN from some stores
        try:
            self.log_metrics(finite, step=epoch)
        except Exception as e:  # a tracking hiccup must not stop a training
            log.warning("could not log epoch %d metrics to MLflow: %s", epoch, e)

    def on_train_end(self, result: FitResult) -> None:
        pass
