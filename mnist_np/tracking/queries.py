"""Reads from MLflow as plain data: runs, their histories and artifacts, a sweep's members."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from mnist_np.tracking.client import MlflowError
from mnist_np.tracking.conventions import OUTPUT_DIR_TAG, PARENT_RUN_TAG
from mnist_np.tracking.uris import require_store


def search_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> list[dict[str, Any]]:
    """Runs as plain dicts with keys ``run_id, name, status, params, metrics, tags, start_time, end_time`` (ms)."""
    runs = client.search_runs(experiment_ids, filter_string=filter_string, max_results=10_000)
    return [
        {
            "run_id": r.info.run_id,
            "name": r.info.run_name,
            "status": r.info.status,
            "params": dict(r.data.params),
            "metrics": dict(r.data.metrics),
            "tags": dict(r.data.tags),
            "start_time": r.info.start_time,
            "end_time": r.info.end_time,
        }
        for r in runs
    ]


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str,
               filter_string: str = "") -> list[dict[str, Any]]:
    """Runs whose ``mlflow.parentRunId`` is ``parent_run_id`` (a sweep's members), as :func:`search_runs` gives them,
    narrowed by ``filter_string`` if given."""
    members = f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'"
    return search_runs(client, [experiment_id], f"{members} and {filter_string}" if filter_string else members)


def runs_to_compare(tracking_uri: str, target: str, filter_string: str = "") -> tuple[str, list[dict[str, Any]]]:
    """The runs ``scripts/compare.py`` shows: an experiment's trainings (sweep parents left out),
    or a sweep parent's members, narrowed by an MLflow ``filter_string``. Returns a title and the runs.

    Raises:
        ValueError: one line -- ``target`` is neither an experiment nor a run, or MLflow refuses the filter.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(target)
    try:
        if exp is not None:
            runs = [r for r in search_runs(client, [exp.experiment_id], filter_string) if "sweep_dir" not in r["tags"]]
            return f"experiment {target!r}", runs
        try:
            parent = client.get_run(target)
        except MlflowError:
            names = sorted(e.name for e in client.search_experiments())
            raise ValueError(f"{target!r} is neither an experiment ({', '.join(names) or 'none'}) nor a "
                             f"run in {tracking_uri}") from None
        return f"sweep {parent.info.run_name!r}", child_runs(client, parent.info.experiment_id, target, filter_string)
    except MlflowError as e:
        first = str(e.message if hasattr(e, "message") else e).strip().splitlines()[0]
        raise ValueError(f"--filter {filter_string!r} is not allowed: {first}") from None


def run_output_dir(run_id: str, tracking_uri: str) -> Path:
    """The output dir a run recorded (tag ``hydra_output_dir``); a clear error for an unknown run."""
    tags = run_tags(run_id, tracking_uri)
    if OUTPUT_DIR_TAG not in tags:
        raise ValueError(f"run {run_id} records no output dir (tag {OUTPUT_DIR_TAG})")
    return Path(tags[OUTPUT_DIR_TAG])


def run_tags(run_id: str, tracking_uri: str) -> dict[str, str]:
    """A run's tags; a clear error for a missing store or an unknown run."""
    require_store(tracking_uri, f"run {run_id!r}")
    try:
        return dict(MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data.tags)
    except MlflowError:
        raise ValueError(f"no run {run_id!r} in {tracking_uri}") from None


def fetch_run(run_id: str, tracking_uri: str, dest: Path, artifacts: tuple[str, ...] = ()) -> dict[str, Any]:
    """A run's tags, final metrics, per-step metric histories, and local copies of ``artifacts``.

    Returns ``{"tags", "metrics", "history": {name: {step: value}}, "files": {artifact: Path}, "status"}``.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowError:
        raise ValueError(f"no run {run_id!r} in {tracking_uri}") from None
    history = {
        name: {m.step: m.value for m in client.get_metric_history(run_id, name)} for name in run.data.metrics
    }
    files = {}
    dest.mkdir(parents=True, exist_ok=True)
    for path in artifacts:
        try:
            files[path] = Path(client.download_artifacts(run_id, path, str(dest)))
        except (MlflowError, OSError):
            raise ValueError(f"run {run_id} has no artifact {path}") from None
    return {"tags": dict(run.data.tags), "metrics": dict(run.data.metrics), "history": history, "files": files,
            "status": run.info.status}


def run_snapshot(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    """What MLflow holds of a run, as plain data; ``None`` if there is no such run.

    Keys: ``status, params, tags, metrics`` (latest values), ``steps``
    (every logged ``(key, step)``), ``files`` (artifact path -> size),
    ``digests`` (dataset inputs), ``models`` (logged model outputs).
    """
    try:
        run = client.get_run(run_id)
    except MlflowError as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    steps = {(key, m.step) for key in run.data.metrics for m in client.get_metric_history(run_id, key)}
    return {
        "status": run.info.status,
        "params": dict(run.data.params),
        "tags": dict(run.data.tags),
        "metrics": dict(run.data.metrics),
        "steps": steps,
        "files": artifact_sizes(client, run_id),
        "digests": {d.dataset.digest for d in run.inputs.dataset_inputs} if run.inputs else set(),
        "models": len(run.outputs.model_outputs) if run.outputs else 0,
    }


def artifact_sizes(client: MlflowClient, run_id: str, path: str | None = None) -> dict[str, int]:
    """Every artifact file of the run under ``path`` -> its size in bytes."""
    found: dict[str, int] = {}
    for f in client.list_artifacts(run_id, path):
        if f.is_dir:
            found.update(artifact_sizes(client, run_id, f.path))
        else:
            found[f.path] = f.file_size or 0
    return found


def run_status(client: MlflowClient, run_id: str) -> str:
    """The run's status (RUNNING, FINISHED, FAILED, KILLED)."""
    return client.get_run(run_id).info.status


def latest_metrics(client: MlflowClient, run_id: str) -> dict[str, float]:
    """The latest value of each of the run's metrics."""
    return dict(client.get_run(run_id).data.metrics)


def logged_steps(client: MlflowClient, run_id: str, key: str) -> set[int]:
    """The steps at which metric ``key`` has a value."""
    return {m.step for m in client.get_metric_history(run_id, key)}
