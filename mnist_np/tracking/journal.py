"""The journal: every call a run's tracker makes, appended to its output dir before it is sent.

``mlflow_journal.jsonl`` holds one JSON object per call (``op`` and its
fields), so the output dir has all the run sent whether MLflow got it or
not; :func:`read_journal` folds it back into the run's final state for
:mod:`mnist_np.tracking.sync`. ``mlflow_run.json`` says which MLflow run
(id, store, experiment) the dir's files belong to.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from mnist_np.common.files import atomic_write_text
from mnist_np.tracking.conventions import FAILURE_TAG, cap_tag

JOURNAL_FILE = "mlflow_journal.jsonl"  # in the output dir: every call the tracker made, in order
RUN_FILE = "mlflow_run.json"  # in the output dir: which MLflow run its files belong to


class Journal:
    """Appends calls to ``path``; with ``path=None`` (a tracker replaying a journal, a sweep's parent) it keeps
    nothing."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    @property
    def folder(self) -> Path | None:
        return self.path.parent if self.path is not None else None

    def note(self, op: str, **fields: Any) -> None:
        """Append one call (before it is sent: the journal is the truth)."""
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"op": op, **fields}) + "\n")

    def note_start(self, run_name: str, params: Mapping[str, str], tags: Mapping[str, str], experiment_name: str,
                   tracking_uri: str, start_time: int | None = None) -> dict[str, str]:
        """Journal a run's start; returns its tags as MLflow gets them (with the run name, capped)."""
        tags = {MLFLOW_RUN_NAME: run_name, **{k: cap_tag(str(v)) for k, v in tags.items()}}
        self.note("start", run_name=run_name, params=dict(params), tags=tags, experiment_name=experiment_name,
                  tracking_uri=tracking_uri, start_time=start_time or int(time.time() * 1000))
        return tags

    def note_end(self, status: str, reason: str | None, end_time: int | None = None, retry: bool = False) -> int:
        """Journal how the run ended; returns the end time. ``retry``: it failed for want of something outside it
        (its data, its store, its process), so a continued sweep runs it again (see ``continued_member``)."""
        end_time = end_time or int(time.time() * 1000)
        self.note("end", status=status, reason=reason, end_time=end_time, **({"retry": True} if retry else {}))
        return end_time

    def local(self, path: Path) -> str:
        """A path as the journal stores it: relative to the output dir when inside it (dirs get moved)."""
        path = Path(path).resolve()
        if self.path is not None and path.is_relative_to(self.path.parent.resolve()):
            return str(path.relative_to(self.path.parent.resolve()))
        return str(path)


@dataclass
class JournalState:
    """The last state of everything a run sent, folded from its journal."""

    start: dict[str, Any] | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[tuple[str, int], tuple[float, int]] = field(default_factory=dict)  # (key, step) -> (value, timestamp)
    datasets: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[tuple[str, str | None]] = field(default_factory=list)  # (local path, artifact dir)
    model: dict[str, Any] | None = None
    end: dict[str, Any] | None = None  # how the run ended; None while running or after a kill -9

    def apply(self, op: dict[str, Any]) -> None:
        """Fold one journaled call into the state."""
        kind = op.get("op")
        if kind == "start":
            self.start, self.params, self.tags = op, dict(op["params"]), dict(op["tags"])
        elif kind == "tags":
            self.tags.update(op["tags"])
        elif kind == "metrics":
            for key, value in op["metrics"].items():
                self.metrics[(key, int(op["step"]))] = (float(value), int(op["timestamp"]))
        elif kind == "dataset":
            self.datasets.append(op)
        elif kind == "artifacts":
            if (op["path"], op["artifact_path"]) not in self.artifacts:
                self.artifacts.append((op["path"], op["artifact_path"]))
        elif kind == "model":
            self.model = op
        elif kind == "end":
            self.end = op
            if op.get("reason"):
                self.tags[FAILURE_TAG] = op["reason"]
        elif kind == "reopen":  # a resume: running again, the old ending and its reason no longer hold
            self.end = None
            self.tags.pop(FAILURE_TAG, None)
            self.tags.update(op["tags"])


def read_journal(path: Path) -> JournalState:
    """Fold a journal into its final state (a torn last line, from a killed process, is skipped)."""
    state = JournalState()
    for line in path.read_text().splitlines():
        try:
            op = json.loads(line)
        except json.JSONDecodeError:
            continue
        state.apply(op)
    return state


def write_run_file(output_dir: Path, run_id: str, tracking_uri: str, experiment_name: str, **extra: str) -> None:
    """Write ``mlflow_run.json`` atomically (a reader never sees half of it)."""
    info = {"run_id": run_id, "tracking_uri": tracking_uri, "experiment_name": experiment_name, **extra}
    atomic_write_text(output_dir / RUN_FILE, json.dumps(info, indent=2))


def read_run_file(output_dir: Path) -> dict[str, str]:
    """``mlflow_run.json`` of ``output_dir`` (``{}`` when it has none)."""
    path = output_dir / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
