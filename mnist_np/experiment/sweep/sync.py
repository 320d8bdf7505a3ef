"""Sync a sweep's dir into MLflow: every member's run, then the parent's summary (``scripts/sync.py <sweep dir>``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterator

from omegaconf import OmegaConf

from mnist_np.experiment.sweep.info import SweepInfo, parent_params
from mnist_np.experiment.sweep.summary import close_sweep
from mnist_np.tracking.queries import run_snapshot
from mnist_np.tracking.sync import run_dirs, sync_output_dir
from mnist_np.tracking.tracker import MlflowTracker


def sync_paths(paths: list[str], tracking_uri: str | None = None) -> Iterator[str]:
    """Sync each run dir, or each member of a sweep dir and then the sweep's parent run; one line per run.

    Raises:
        SyncError: a path that is neither a run's nor a sweep's output dir.
        TrackingUnavailable: the server does not answer.
    """
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
        yield (f"{path}: sweep {info.name!r} ({info.parent_run_id}): "
               f"{summary.finished} of {summary.total} members finished")


def parent_in_store(info: SweepInfo, tracking_uri: str, current: bool = True) -> SweepInfo:
    """The sweep as seen from ``tracking_uri``: its parent run there, made if it has none yet.

    For syncing a sweep dir into another store: the members become children
    of this parent, and the summary goes to it. The parent copies the
    original's name, params (the overrides in ``multirun.yaml``) and its
    sweep dir. ``mlflow_sweep.json`` remembers every store's parent, so that
    syncing again finds the same one, and with ``current`` (a whole sweep
    dir synced) points at this one from then on; without (one member
    synced) it goes on pointing where it did.
    """
    if tracking_uri == info.tracking_uri:
        return info
    parents = {info.tracking_uri: info.parent_run_id, **info.parents}
    tracker = MlflowTracker(tracking_uri, info.experiment_name, run_id=parents.get(tracking_uri))
    if tracker.run_id is None or run_snapshot(tracker.client, tracker.run_id) is None:
        multirun = Path(info.sweep_dir) / "multirun.yaml"
        task = list(OmegaConf.load(multirun).hydra.overrides.task) if multirun.is_file() else []
        tracker.start(info.name, parent_params(task, info.swept), {
            "sweep_dir": info.sweep_dir,
            "overrides": " ".join(task),
            "mlflow.source.name": "scripts/sync.py",
            "copied_from": f"{info.tracking_uri} run {info.parent_run_id}",
        })
        parents[tracking_uri] = tracker.run_id or ""
    copy = replace(info, parent_run_id=parents[tracking_uri], tracking_uri=tracking_uri, parents=parents)
    (copy if current else replace(info, parents=parents)).save()
    return copy
