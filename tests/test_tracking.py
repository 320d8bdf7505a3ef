"""The MLflow adapter against a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from mnist_np.tracking.tracker import MlflowTracker, flatten
from mnist_np.tracking.uris import artifact_location_for, default_tracking_uri


def test_flatten_uses_dotted_keys() -> None:
    assert flatten({"optimizer": {"lr": 0.1, "betas": [0.9, 0.99]}, "seed": 0, "data": {"dir": None}}) == {
        "optimizer.lr": "0.1", "optimizer.betas": "[0.9, 0.99]", "seed": "0", "data.dir": "null"}


def test_store_location_is_absolute_with_artifacts_beside_it(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert artifact_location_for(uri) == (tmp_path / "mlartifacts").as_uri()
    assert artifact_location_for("http://127.0.0.1:5000") is None


def test_other_errors_are_not_retried(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = MlflowTracker(tracking_uri, "tests")
    tracker.start("r", {}, {})

    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise mlflow.exceptions.MlflowException("disk I/O error")

    monkeypatch.setattr(tracker.client, "log_inputs", broken)
    with pytest.raises(mlflow.exceptions.MlflowException, match="disk I/O"):
        tracker.log_dataset("mnist", "abc", "pinned", {"train": 1})
    assert len(calls) == 1  # not retried: only a lost insert race is (tests/test_dataset_race.py)


def test_end_records_status_and_reason(tracking_uri: str) -> None:
    tracker = MlflowTracker(tracking_uri, "tests")
    run_id = tracker.start("r", {"a": "1"}, {"t": "x"})
    tracker.end("FAILED", "because")
    run = tracker.client.get_run(run_id)
    assert (run.info.status == "FAILED" and run.data.tags["failure_reason"] == "because"
            and run.data.params == {"a": "1"})


@pytest.mark.parametrize("status", ["FINISHED", "FAILED"])
def test_epoch_metrics_are_sent_in_batches_and_none_is_lost(tracking_uri: str, monkeypatch: pytest.MonkeyPatch,
                                                            status: str) -> None:
    tracker = MlflowTracker(tracking_uri, "tests")
    run_id = tracker.start("r", {}, {})
    requests: list[int] = []
    real = tracker.client.log_batch
    monkeypatch.setattr(tracker.client, "log_batch",
                        lambda run, metrics=(), **kw: (requests.append(len(metrics)), real(run, metrics=metrics, **kw)))
    for epoch in range(1, 11):  # ten quick epochs: the first goes out at once, the rest wait for the next batch
        tracker.on_epoch_end(epoch, {"train_loss": 1.0 / epoch, "val_loss": float("nan")}, None, False)
    assert requests == [1]
    if status == "FINISHED":
        tracker.on_train_end(None)
    tracker.end(status)  # a failing run's held-back epochs go out before it closes
    assert requests == [1, 9]
    history = tracker.client.get_metric_history(run_id, "train_loss")
    assert (sorted(m.step for m in history) == list(range(1, 11))
            and "val_loss" not in tracker.client.get_run(run_id).data.metrics)


@pytest.mark.fault("tracking faults", "store race")
def test_runs_of_dead_processes_are_reaped_and_live_ones_kept(tracking_uri: str) -> None:
    import subprocess
    import sys

    from mnist_np.common.procs import is_dead, process_identity
    from mnist_np.tracking.runs import reap_dead_runs

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead_ident = process_identity(child.pid)
    assert not is_dead(dead_ident)
    child.kill()
    child.wait()
    assert is_dead(dead_ident) and not is_dead(process_identity())
    assert not is_dead("another-host:1:123")

    tracker = MlflowTracker(tracking_uri, "tests")
    dead = tracker.start("killed", {}, {"process": dead_ident})
    alive = MlflowTracker(tracking_uri, "tests").start("alive", {}, {"process": process_identity()})
    elsewhere = MlflowTracker(tracking_uri, "tests").start("elsewhere", {}, {"process": "another-host:1:123"})
    assert reap_dead_runs(tracker.client, tracker.experiment_id, "gone") == [dead]
    get = tracker.client.get_run
    assert get(dead).info.status == "FAILED" and get(dead).data.tags["failure_reason"].startswith("gone (process ")
    assert get(alive).info.status == "RUNNING" and get(elsewhere).info.status == "RUNNING"


@pytest.mark.fault("tracking faults", "fail fast")
def test_a_server_that_is_down_fails_fast_with_one_line(tmp_path: Path) -> None:
    """No minutes of retries: the run stops before training, and no output is made."""
    import socket
    import subprocess
    import time

    from conftest import PYTHON, TRAIN_SCRIPT

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    proc = subprocess.run(
        [PYTHON, str(TRAIN_SCRIPT), f"mlflow.tracking_uri=http://127.0.0.1:{port}",
         f"hydra.run.dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert time.monotonic() - start < 30
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: MLflow server http://127.0.0.1:{port} is not reachable")
    assert not (tmp_path / "out" / "weights").exists()
