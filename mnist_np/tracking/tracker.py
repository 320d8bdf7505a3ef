"""One MLflow run, written through a journal and never allowed to stop the training.

:class:`MlflowTracker` has one contract: every write is journaled first
(:mod:`mnist_np.tracking.journal`) and then sent; it is also the training
loop's callback, logging one batch of metrics per epoch (step = epoch).

A server that is down when a run starts stops it at once (the client checks
within seconds). One that dies *during* a run never stops the training:
with ``fail_soft`` on (the run sets it once the run exists), the first call
that fails makes the tracker give up on MLflow for the rest of the run (one
warning), while every call keeps going to the journal;
:mod:`mnist_np.tracking.sync` replays it later, sending only what is missing.
Reads and the administration of other runs live in
:mod:`~mnist_np.tracking.queries` and :mod:`~mnist_np.tracking.runs`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from mnist_np.common.errors import error_line
from mnist_np.nn.model import MLP
from mnist_np.tracking.client import MlflowError, connect, experiment_id, guarded, log_batches, unique_violation
from mnist_np.tracking.conventions import FAILURE_TAG, OFFLINE_TAG, cap_tag, finite
from mnist_np.tracking.journal import Journal
from mnist_np.tracking.logged_model import log_pyfunc_model
from mnist_np.tracking.uris import server_reachable
from mnist_np.train.loop import Callback, FitResult

log = logging.getLogger(__name__)

# Per-epoch metrics reach MLflow at most this late: one request per epoch
# costs a store transaction (tens of ms on SQLite), more than a short epoch.
# The journal and metrics.jsonl get every epoch at once.
EPOCH_METRICS_EVERY_SECONDS = 2.0


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": "0.1"}``: a config as run params (lists stay one value)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = "null" if value is None else str(value)
    return flat


class MlflowTracker(Callback):
    """Journaled, fail-soft writes to one MLflow run, and the training callback that makes them.

    Args:
        tracking_uri: the store (created and migrated on first use; a server must answer).
        experiment_name: created if missing.
        run_id: write to this existing run instead of starting one.
        journal: the run's ``mlflow_journal.jsonl``; every call is appended there first.
        run_name: the existing run's name (what a started run names itself).
    """

    def __init__(self, tracking_uri: str, experiment_name: str, run_id: str | None = None, journal: Path | None = None,
                 run_name: str = "") -> None:
        self.tracking_uri = tracking_uri
        self.client = connect(tracking_uri)
        self.experiment_name = experiment_name
        self.experiment_id = experiment_id(self.client, tracking_uri, experiment_name)
        self.run_id = run_id
        self.run_name = run_name
        self.journal = Journal(journal)
        self.fail_soft = False
        self.offline: str | None = None  # why MLflow was given up on, once it was
        self.failures: list[str] = []  # calls the server refused while it was up
        self.skip_steps: set[int] = set()  # epochs MLflow already holds (a resumed run re-trains them identically)
        self._pending: list[Metric] = []  # epoch metrics journaled but not sent yet
        self._last_sent = -float("inf")

    @property
    def _id(self) -> str:
        if self.run_id is None:
            raise RuntimeError("the run has not been started")
        return self.run_id

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
            where = self.journal.folder or "the output dir"
            if server_reachable(self.tracking_uri):
                log.warning("MLflow refused %s (it stays in %s)", error, where)
                self.failures.append(error)
                return False
            self.offline = error
            log.warning(
                "MLflow at %s stopped answering (%s); training goes on and everything stays in %s -- "
                "upload it later with: python scripts/sync.py %s", self.tracking_uri, error, where, where,
            )
            self.journal.note("tags", tags={OFFLINE_TAG: f"{time.strftime('%Y-%m-%d %H:%M:%S')} {error}"})
            return False

    # -- the run -------------------------------------------------------------
    def start(self, run_name: str, params: Mapping[str, str], tags: Mapping[str, str],
              start_time: int | None = None) -> str:
        """Create the run with its params and tags; returns the run id."""
        tags = self.journal.note_start(run_name, params, tags, self.experiment_name, self.tracking_uri, start_time)
        run = guarded(self.tracking_uri,
                      lambda: self.client.create_run(self.experiment_id, run_name=run_name, tags=tags,
                                                     start_time=start_time))
        self.run_id, self.run_name = run.info.run_id, run_name
        self.log_params(params)
        return self.run_id

    def log_params(self, params: Mapping[str, str]) -> None:
        """Params (immutable in MLflow); journaled with the run's start, so sent but not journaled again."""
        log_batches(self.client, self._id, params=[Param(k, v) for k, v in params.items()])

    def reopen(self, tags: Mapping[str, str]) -> bool:
        """Mark an interrupted run RUNNING again (to resume it), drop its old failure reason, add ``tags``."""
        tags = {k: str(v) for k, v in tags.items()}
        self.journal.note("reopen", tags=tags)

        def send() -> None:
            self.client.update_run(self._id, status="RUNNING")
            try:
                self.client.delete_tag(self._id, FAILURE_TAG)
            except MlflowError:
                pass  # there was none
            self.client.log_batch(self._id, tags=[RunTag(k, v) for k, v in tags.items()])

        return self._send("reopening the run", send)

    def log_dataset(self, name: str, digest: str, source: str, sizes: Mapping[str, int],
                    context: str = "training") -> bool:
        """Record the data as an MLflow dataset input: name, digest of the pinned files, split sizes."""
        self.journal.note("dataset", name=name, digest=digest, source=source, sizes=dict(sizes), context=context)
        return self._send("the dataset", lambda: self._log_dataset(name, digest, source, sizes, context))

    def _log_dataset(self, name: str, digest: str, source: str, sizes: Mapping[str, int], context: str) -> None:
        profile = "{" + ", ".join(f'"{k}": {v}' for k, v in sizes.items()) + "}"
        dataset = Dataset(name=name, digest=digest, source_type="local", source=source, profile=profile)
        inputs = [DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])]
        for attempt in range(3):
            try:
                self.client.log_inputs(self._id, datasets=inputs)
                return
            except MlflowError as e:
                # Parallel sweep members insert the same dataset row at once; the
                # store checks, then inserts, so the losers get a unique violation
                # (whatever the database). Retrying links the row the winner created.
                if not unique_violation(e) or attempt == 2:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = None, timestamp: int | None = None, defer: bool = False
    ) -> bool:
        """All of ``metrics`` in one call (one request against a server); NaN values are left out.

        ``defer``: journal them now but send them with the next batch, at
        most ``EPOCH_METRICS_EVERY_SECONDS`` later (see :meth:`flush_metrics`).
        """
        metrics = finite(metrics)
        now = timestamp or int(time.time() * 1000)
        self.journal.note("metrics", step=step or 0, timestamp=now, metrics={k: float(v) for k, v in metrics.items()})
        self._pending += [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if defer and time.monotonic() - self._last_sent < EPOCH_METRICS_EVERY_SECONDS:
            return True
        return self.flush_metrics()

    def flush_metrics(self) -> bool:
        """Send the metrics held back by ``log_metrics(defer=True)``."""
        batch, self._pending = self._pending, []
        self._last_sent = time.monotonic()
        if not batch:
            return True
        steps = (f"steps {batch[0].step}-{batch[-1].step}" if batch[0].step != batch[-1].step
                 else f"step {batch[0].step}")
        return self._send(f"metrics at {steps}", lambda: log_batches(self.client, self._id, metrics=batch))

    def set_tags(self, tags: Mapping[str, str]) -> bool:
        tags = {k: cap_tag(str(v)) for k, v in tags.items()}
        self.journal.note("tags", tags=tags)
        return self._send("tags",
                          lambda: log_batches(self.client, self._id, tags=[RunTag(k, v) for k, v in tags.items()]))

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> bool:
        self.journal.note("artifacts", path=self.journal.local(local_dir), artifact_path=artifact_path)
        return self._send(f"{local_dir.name}/",
                          lambda: self.client.log_artifacts(self._id, str(local_dir), artifact_path))

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> bool:
        self.journal.note("artifacts", path=self.journal.local(local_path), artifact_path=artifact_path)
        return self._send(local_path.name, lambda: self.client.log_artifact(self._id, str(local_path), artifact_path))

    def log_model(self, weights_path: Path, input_example: np.ndarray) -> bool:
        """The weights as the run's MLflow model (see :func:`~mnist_np.tracking.logged_model.log_pyfunc_model`)."""
        # The example is a few [0, 1] images: as bytes (x 255) it fits a journal line.
        example = np.rint(np.asarray(input_example, dtype=np.float64) * 255).clip(0, 255).astype(np.uint8)
        self.journal.note("model", weights=self.journal.local(weights_path), example=example.tolist())
        return self._send("the model",
                          lambda: log_pyfunc_model(self._id, self.tracking_uri, weights_path, input_example))

    def end(self, status: str = "FINISHED", reason: str | None = None) -> bool:
        """Close the run with ``status`` (FINISHED, FAILED, KILLED) and, if given, the reason."""
        if self.run_id is None:
            return False
        reason = cap_tag(reason) if reason else None
        self.flush_metrics()
        now = self.journal.note_end(status, reason)

        def send() -> None:
            if reason:
                self.client.set_tag(self._id, FAILURE_TAG, reason)
            self.client.set_terminated(self._id, status=RunStatus.to_string(RunStatus.from_string(status)),
                                       end_time=now)

        return self._send(f"the final status {status}", send)

    # -- training callback -------------------------------------------------
    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model: MLP, is_best: bool) -> None:
        if epoch in self.skip_steps:
            return  # logged before an interruption; the re-run gave the same values
        self.log_metrics(metrics, step=epoch, defer=True)

    def on_train_end(self, result: FitResult) -> None:
        self.flush_metrics()
