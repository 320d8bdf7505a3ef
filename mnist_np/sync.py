"""Upload what a run's output dir holds but MLflow misses: ``python scripts/sync.py <output dir>``.

Every call a run's tracker makes is first written to ``mlflow_journal.jsonl``
in its output dir (see :mod:`mnist_np.tracking`). When the MLflow server died
during the run, the journal has what never arrived. Syncing replays it into
the run named by ``mlflow_run.json`` -- or into a new run if the store has no
such run (a new store, a deleted run) -- and sends only what is missing:

- params and tags whose value differs (a param that MLflow holds with another
  value is reported, never overwritten: params are immutable);
- metric values whose ``(key, step)`` MLflow does not have yet;
- the dataset input, if its digest is not linked;
- artifact files that are missing or have another size;
- the logged model, if the run has none;
- the final status (and reason) the run really ended with.

So syncing twice sends nothing the second time. A run whose process was
killed outright never wrote its end; its status is then left as it is (the
next run closes it as killed from outside). MLflow itself is reached only
through :mod:`mnist_np.tracking`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"  # in a run's output dir: which MLflow run (id, store, experiment) its files belong to


class SyncError(ValueError):
    """A directory that cannot be synced; ``str()`` is one line for the user."""


@dataclass
class Journal:
    """The last state of everything a run sent, folded from its journal."""

    start: dict[str, Any] | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[tuple[str, int], tuple[float, int]] = field(default_factory=dict)  # (key, step) -> (value, timestamp)
    datasets: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[tuple[str, str | None]] = field(default_factory=list)  # (local path, artifact dir)
    model: dict[str, Any] | None = None
    end: dict[str, Any] | None = None  # how the run ended; None while running or after a kill -9


def write_run_file(output_dir: Path, run_id: str, tracking_uri: str, experiment_name: str, **extra: str) -> None:
    """Write ``mlflow_run.json`` atomically (a reader never sees half of it)."""
    path = output_dir / RUN_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri, "experiment_name": experiment_name, **extra}, indent=2))
    tmp.replace(path)


def read_journal(path: Path) -> Journal:
    """Fold a journal into its final state (a torn last line, from a killed process, is skipped)."""
    j = Journal()
    for line in path.read_text().splitlines():
        try:
            op = json.loads(line)
        except json.JSONDecodeError:
            continue
        kind = op.get("op")
        if kind == "start":
            j.start, j.params, j.tags = op, dict(op["params"]), dict(op["tags"])
        elif kind == "tags":
            j.tags.update(op["tags"])
        elif kind == "metrics":
            for key, value in op["metrics"].items():
                j.metrics[(key, int(op["step"]))] = (float(value), int(op["timestamp"]))
        elif kind == "dataset":
            j.datasets.append(op)
        elif kind == "artifacts":
            if (op["path"], op["artifact_path"]) not in j.artifacts:
                j.artifacts.append((op["path"], op["artifact_path"]))
        elif kind == "model":
            j.model = op
        elif kind == "end":
            j.end = op
            if op.get("reason"):
                j.tags["failure_reason"] = op["reason"]
        elif kind == "reopen":  # a resume: running again, the old ending and its reason no longer hold
            j.end = None
            j.tags.pop("failure_reason", None)
            j.tags.update(op["tags"])
    return j


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
        return self.params + self.tags + self.metrics + self.datasets + self.files + int(self.model) + int(self.status is not None)

    def line(self) -> str:
        """One line for the user, e.g. ``run 3f2a... (new run): 14 metric values, 9 files, status FINISHED``."""
        what = [f"{n} {name}" for n, name in [(self.params, "params"), (self.tags, "tags"), (self.metrics, "metric values"),
                                               (self.datasets, "dataset inputs"), (self.files, "files")] if n]
        if self.model:
            what.append("the model")
        if self.status:
            what.append(f"status {self.status}")
        head = f"{self.output_dir}: run {self.run_id}{' (new run)' if self.created else ''}: "
        tail = "".join(f"; {len(x)} {label}" for x, label in [(self.gone, "journaled files gone from disk"),
                                                               (self.conflicts, "params differ in MLflow (kept)")] if x)
        return head + ("uploaded " + ", ".join(what) if what else "already complete") + tail


def _local_files(output_dir: Path, j: Journal) -> tuple[dict[str, Path], list[str]]:
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


def sync_output_dir(output_dir: Path | str, tracking_uri: str | None = None, parent_run_id: str | None = None) -> SyncReport:
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
    from mnist_np.tracking import JOURNAL_FILE, PARENT_RUN_TAG, MlflowTracker

    output_dir = Path(output_dir).resolve()
    journal_path = output_dir / JOURNAL_FILE
    if not journal_path.is_file():
        raise SyncError(f"{output_dir} holds no {JOURNAL_FILE}; expected the output dir of a run (or of a sweep)")
    j = read_journal(journal_path)
    if j.start is None:
        raise SyncError(f"{journal_path} never records the run's start; nothing to sync")
    info = json.loads((output_dir / RUN_FILE).read_text()) if (output_dir / RUN_FILE).is_file() else {}
    uri = tracking_uri or info.get("tracking_uri") or j.start["tracking_uri"]
    experiment = info.get("experiment_name") or j.start["experiment_name"]
    if parent_run_id is not None:  # the run's parent in this store replaces the journal's, wherever it is named
        for tags in (j.start["tags"], j.tags):
            if PARENT_RUN_TAG in tags:
                tags[PARENT_RUN_TAG] = parent_run_id

    tracker = MlflowTracker(uri, experiment, run_id=info.get("run_id"))
    remote = tracker.remote() if tracker.run_id else None
    report = SyncReport(output_dir, tracker.run_id or "")
    if remote is None:
        # No such run in this store: make it, as the run would have (same name, params, tags, start).
        previous = tracker.run_id
        tracker.start(j.start["run_name"], j.params, j.start["tags"], start_time=j.start.get("start_time"))
        write_run_file(output_dir, tracker.run_id, uri, experiment, **({"previous_run_id": previous} if previous else {}))
        report.run_id, report.created = tracker.run_id, True
        remote = tracker.remote()
        assert remote is not None

    missing = {k: v for k, v in j.params.items() if k not in remote["params"]}
    report.conflicts = sorted(k for k, v in j.params.items() if k in remote["params"] and remote["params"][k] != v)
    if missing:
        tracker.log_params(missing)
        report.params = len(missing)

    values = [(key, value, ts, step) for (key, step), (value, ts) in sorted(j.metrics.items()) if (key, step) not in remote["steps"]]
    if values:
        tracker.log_metric_values(values)
        report.metrics = len(values)

    for d in j.datasets:
        if d["digest"] not in remote["digests"]:
            tracker.log_dataset(d["name"], d["digest"], d["source"], d["sizes"], d["context"])
            remote["digests"].add(d["digest"])
            report.datasets += 1

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

    tags = {k: v for k, v in j.tags.items() if remote["tags"].get(k) != v}
    if tags:
        tracker.set_tags(tags)
        report.tags = len(tags)
    if j.end is not None:
        if "failure_reason" in remote["tags"] and "failure_reason" not in j.tags:
            # Set by whoever found the run RUNNING with its process gone; the journal knows better.
            tracker.delete_tag("failure_reason")
            report.tags += 1
        if remote["status"] != j.end["status"]:
            tracker.set_status(j.end["status"], None, j.end.get("end_time"))
            report.status = j.end["status"]
    return report


def sync_paths(paths: list[str], tracking_uri: str | None = None) -> Iterator[str]:
    """Sync each run dir, or each member of a sweep dir and then the sweep's parent run; one line per run.

    Raises:
        SyncError: a path that is neither a run's nor a sweep's output dir.
        TrackingUnavailable: the server does not answer.
    """
    from mnist_np.sweep import SweepInfo, close_sweep, parent_in_store

    for path in paths:
        members = run_dirs(path)
        info = SweepInfo.load(path)
        parent = info.parent_run_id if info else None
        if info is not None and tracking_uri:
            info = parent_in_store(info, tracking_uri)  # into another store: the members need a parent there
            parent = info.parent_run_id
        elif info is None and tracking_uri and (sweep := SweepInfo.load(Path(path).parent)) is not None:
            # One member of a sweep, into another store: a child of the sweep's parent there too.
            parent = parent_in_store(sweep, tracking_uri, current=False).parent_run_id
        for run_dir in members:
            yield sync_output_dir(run_dir, tracking_uri, parent).line()
        if info is None:
            continue
        try:
            summary = close_sweep(info)
        except ValueError as e:
            yield f"{path}: sweep parent not summarised yet: {e}"
            continue
        yield f"{path}: sweep {info.name!r} ({info.parent_run_id}): {summary.finished} of {summary.total} members finished"


def run_dirs(path: Path | str) -> list[Path]:
    """The run output dirs under ``path``: itself, or a sweep's member dirs (``0/``, ``1/``, ...)."""
    from mnist_np.tracking import JOURNAL_FILE

    path = Path(path)
    if (path / JOURNAL_FILE).is_file():
        return [path]
    members = sorted((p.parent for p in path.glob(f"*/{JOURNAL_FILE}")), key=lambda p: (len(p.name), p.name))
    if not members:
        raise SyncError(f"{path} holds no {JOURNAL_FILE}, and no sweep members with one; expected a run's or a sweep's output dir")
    return members
