"""Upload what a run's output dir holds but MLflow misses: ``python scripts/sync.py <output dir>``.

Every call a run's tracker makes is first written to ``mlflow_journal.jsonl``
in its output dir (see :mod:`mnist_np.tracking.journal`). When the MLflow
server died during the run, the journal has what never arrived. Syncing
replays it into the run named by ``mlflow_run.json`` -- or into a new run if
the store has no such run (a new store, a deleted run) -- and sends only
what is missing:

- params and tags whose value differs (a param that MLflow holds with another
  value is reported, never overwritten: params are immutable);
- metric values whose ``(key, step)`` MLflow does not have yet;
- the dataset input, if its digest is not linked;
- artifact files that are missing or have another size;
- the logged model, if the run has none;
- the final status (and reason) the run really ended with.

So syncing twice sends nothing the second time. A run whose process was
killed outright never wrote its end; its status is then left as it is (the
next run closes it as killed from outside). Sweeps (a parent and its
members) are synced by :mod:`mnist_np.experiment.sweep.sync`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnist_np.tracking.conventions import FAILURE_TAG, OUTPUT_DIR_TAG, PARENT_RUN_TAG
from mnist_np.tracking.journal import JOURNAL_FILE, JournalState, read_journal, read_run_file, write_run_file
from mnist_np.tracking.queries import run_snapshot
from mnist_np.tracking.runs import close_run, log_metric_values
from mnist_np.tracking.tracker import MlflowTracker


class SyncError(ValueError):
    """A directory that cannot be synced; ``str()`` is one line for the user."""


@dataclass
class SyncReport:
    """What one sync sent."""

    output_dir: Path
    run_id: str
    created: bool = False
    params: int = 0
    tags: int = 0
    metrics: int = 0
    datasets: int = 0
    files: int = 0
    model: bool = False
    status: str | None = None  # the status set, if it changed
    gone: list[str] = field(default_factory=list)  # journaled files no longer on disk (e.g. rotated checkpoints)
    conflicts: list[str] = field(default_factory=list)  # params MLflow holds with another value

    @property
    def sent(self) -> int:
        """How many items were uploaded (0: MLflow already had everything)."""
        return (self.params + self.tags + self.metrics + self.datasets + self.files + int(self.model)
                + int(self.status is not None))

    def line(self) -> str:
        """One line for the user, e.g. ``run 3f2a... (new run): 14 metric values, 9 files, status FINISHED``."""
        what = [f"{n} {name}"
                for n, name in [(self.params, "params"), (self.tags, "tags"), (self.metrics, "metric values"),
                                 (self.datasets, "dataset inputs"), (self.files, "files")] if n]
        if self.model:
            what.append("the model")
        if self.status:
            what.append(f"status {self.status}")
        head = f"{self.output_dir}: run {self.run_id}{' (new run)' if self.created else ''}: "
        tail = "".join(f"; {len(x)} {label}" for x, label in [(self.gone, "journaled files gone from disk"),
                                                               (self.conflicts, "params differ in MLflow (kept)")] if x)
        return head + ("uploaded " + ", ".join(what) if what else "already complete") + tail


def sync_output_dir(output_dir: Path | str, tracking_uri: str | None = None,
                    parent_run_id: str | None = None) -> SyncReport:
    """Send MLflow what the run in ``output_dir`` logged and MLflow misses; see the module doc.

    Args:
        output_dir: a run's output dir (holds ``mlflow_journal.jsonl`` and ``mlflow_run.json``).
        tracking_uri: another store to sync into (default: the run's own).
        parent_run_id: for a sweep member, its sweep's parent run in that store
            (the journal names the parent in the store the run was made in).

    Raises:
        SyncError: not a run's output dir.
        TrackingUnavailable: the server does not answer (within seconds).
    """
    output_dir = Path(output_dir).resolve()
    journal_path = output_dir / JOURNAL_FILE
    if not journal_path.is_file():
        raise SyncError(f"{output_dir} holds no {JOURNAL_FILE}; expected the output dir of a run (or of a sweep)")
    j = read_journal(journal_path)
    if j.start is None:
        raise SyncError(f"{journal_path} never records the run's start; nothing to sync")
    if parent_run_id is not None:  # the run's parent in this store replaces the journal's, wherever it is named
        for tags in (j.start["tags"], j.tags):
            if PARENT_RUN_TAG in tags:
                tags[PARENT_RUN_TAG] = parent_run_id
    tracker, remote, report = _the_run(output_dir, j, tracking_uri)
    _send_values(tracker, j, remote, report)
    _send_files(tracker, output_dir, j, remote, report)
    _send_ending(tracker, j, remote, report)
    return report


def _the_run(output_dir: Path, j: JournalState,
             tracking_uri: str | None) -> tuple[MlflowTracker, dict[str, Any], SyncReport]:
    """The run the dir belongs to in the store (made as the run would have made it, if the store has none)."""
    assert j.start is not None
    info = read_run_file(output_dir)
    uri = tracking_uri or info.get("tracking_uri") or j.start["tracking_uri"]
    experiment = info.get("experiment_name") or j.start["experiment_name"]
    tracker = MlflowTracker(uri, experiment, run_id=info.get("run_id") or _made_before(uri, experiment, j))
    remote = run_snapshot(tracker.client, tracker.run_id) if tracker.run_id else None
    report = SyncReport(output_dir, tracker.run_id or "")
    if remote is not None and not info:  # the run existed, its process died before it wrote mlflow_run.json
        write_run_file(output_dir, tracker.run_id or "", uri, experiment)
    if remote is None:
        # No such run in this store: make it, as the run would have (same name, params, tags, start).
        previous = tracker.run_id
        tracker.start(j.start["run_name"], j.params, j.start["tags"], start_time=j.start.get("start_time"))
        write_run_file(output_dir, tracker.run_id, uri, experiment,
                       **({"previous_run_id": previous} if previous else {}))
        report.run_id, report.created = tracker.run_id, True
        remote = run_snapshot(tracker.client, tracker.run_id)
        assert remote is not None
    return tracker, remote, report


def _made_before(uri: str, experiment: str, j: JournalState) -> str | None:
    """The run this dir's process made in the store but never wrote down (killed between the two): its id, or None.

    Found by the output dir and name it was tagged with; without this, syncing would make a second run for it.
    """
    assert j.start is not None
    where = j.start["tags"].get(OUTPUT_DIR_TAG)
    if not where or "'" in where:
        return None
    tracker = MlflowTracker(uri, experiment)
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string=f"tags.`{OUTPUT_DIR_TAG}` = '{where}'")
    same = [r.info.run_id for r in runs if r.info.run_name == j.start["run_name"]]
    return same[0] if len(same) == 1 else None


def _send_values(tracker: MlflowTracker, j: JournalState, remote: dict[str, Any], report: SyncReport) -> None:
    """Params MLflow lacks (conflicting ones reported), metric values it lacks, dataset inputs it lacks."""
    missing = {k: v for k, v in j.params.items() if k not in remote["params"]}
    report.conflicts = sorted(k for k, v in j.params.items() if k in remote["params"] and remote["params"][k] != v)
    if missing:
        tracker.log_params(missing)
        report.params = len(missing)
    values = [(key, value, ts, step) for (key, step), (value, ts) in sorted(j.metrics.items())
              if (key, step) not in remote["steps"]]
    if values:
        log_metric_values(tracker.client, tracker.run_id or "", values)
        report.metrics = len(values)
    for d in j.datasets:
        if d["digest"] not in remote["digests"]:
            tracker.log_dataset(d["name"], d["digest"], d["source"], d["sizes"], d["context"])
            remote["digests"].add(d["digest"])
            report.datasets += 1


def _send_files(tracker: MlflowTracker, output_dir: Path, j: JournalState, remote: dict[str, Any],
                report: SyncReport) -> None:
    """Artifact files missing or of another size, and the logged model if the run has none."""
    files, report.gone = _local_files(output_dir, j)
    for artifact, local in files.items():
        if remote["files"].get(artifact) != local.stat().st_size:
            parent = artifact.rsplit("/", 1)[0] if "/" in artifact else None
            tracker.log_artifact(local, parent)
            report.files += 1
    if j.model is not None and remote["models"] == 0:
        weights = Path(j.model["weights"])
        weights = weights if weights.is_absolute() else output_dir / weights
        if weights.is_file():
            tracker.log_model(weights, np.asarray(j.model["example"], dtype=np.float32) / 255)
            report.model = True
        else:
            report.gone.append(j.model["weights"])


def _send_ending(tracker: MlflowTracker, j: JournalState, remote: dict[str, Any], report: SyncReport) -> None:
    """Tags whose value differs, and the status the run really ended with."""
    tags = {k: v for k, v in j.tags.items() if remote["tags"].get(k) != v}
    if tags:
        tracker.set_tags(tags)
        report.tags = len(tags)
    if j.end is None:
        return
    if FAILURE_TAG in remote["tags"] and FAILURE_TAG not in j.tags:
        # Set by whoever found the run RUNNING with its process gone; the journal knows better.
        tracker.client.delete_tag(tracker.run_id, FAILURE_TAG)
        report.tags += 1
    if remote["status"] != j.end["status"]:
        close_run(tracker.client, tracker.run_id or "", j.end["status"], None, j.end.get("end_time"))
        report.status = j.end["status"]


def _local_files(output_dir: Path, j: JournalState) -> tuple[dict[str, Path], list[str]]:
    """Artifact path -> local file for everything the journal uploaded (folders expanded as they are now)."""
    files: dict[str, Path] = {}
    gone = []
    for path, artifact_dir in j.artifacts:
        local = Path(path) if Path(path).is_absolute() else output_dir / path
        prefix = f"{artifact_dir}/" if artifact_dir else ""
        if local.is_dir():
            for f in sorted(p for p in local.rglob("*") if p.is_file()):
                files[prefix + f.relative_to(local).as_posix()] = f
        elif local.is_file():
            files[prefix + local.name] = local
        else:
            gone.append(path)
    return files, gone


def run_dirs(path: Path | str) -> list[Path]:
    """The run output dirs under ``path``: itself, or a sweep's member dirs (``0/``, ``1/``, ...)."""
    path = Path(path)
    if (path / JOURNAL_FILE).is_file():
        return [path]
    members = sorted((p.parent for p in path.glob(f"*/{JOURNAL_FILE}")), key=lambda p: (len(p.name), p.name))
    if not members:
        raise SyncError(f"{path} holds no {JOURNAL_FILE}, and no sweep members with one; expected a run's or "
                        "a sweep's output dir")
    return members
