"""Tracking faults: the MLflow server dies during a run; the training goes on; scripts/sync.py completes the run.

Against a real ``mlflow server`` on 127.0.0.1 (the ``mlflow_server`` fixture),
killed with SIGKILL at a chosen epoch (the run's own epoch log is the trigger,
so the fault lands at the same point every time) and restarted on the same
port and store.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, TRAIN_SCRIPT, LiveServer, mlflow_gaps, small_overrides
from helpers.scripts import run_script
from helpers.stores import migrated_store
from mnist_np.experiment.config.compose import compose
from mnist_np.experiment.run.outputs import EpochLogger
from mnist_np.experiment.run.single import run
from mnist_np.tracking import tracker
from mnist_np.tracking.conventions import OFFLINE_TAG, OUTPUT_DIR_TAG
from mnist_np.tracking.journal import JOURNAL_FILE, read_journal
from mnist_np.tracking.sync import sync_output_dir

SYNC = TRAIN_SCRIPT.parent / "sync.py"
PER_EPOCH = ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds", "samples_per_second"]


def fault_at_epoch(monkeypatch: pytest.MonkeyPatch, actions: dict[int, object]) -> None:
    """Call ``actions[epoch]()`` right after the run wrote that epoch to metrics.jsonl, before MLflow hears of it."""
    real = EpochLogger.on_epoch_end

    def on_epoch_end(self, epoch, metrics, model, is_best):
        real(self, epoch, metrics, model, is_best)
        if epoch in actions:
            actions[epoch]()

    monkeypatch.setattr(EpochLogger, "on_epoch_end", on_epoch_end)
    # Every epoch's metrics go out at once, so the fault is met at the epoch it is injected
    # (normally they are batched every EPOCH_METRICS_EVERY_SECONDS and an outage between two
    # batches would go unnoticed -- and lose nothing).
    monkeypatch.setattr(tracker, "EPOCH_METRICS_EVERY_SECONDS", 0.0)


def sync_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, str(SYNC), *map(str, args)], capture_output=True, text=True, timeout=300)


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
@pytest.mark.fault("tracking faults", "synced")
def test_server_killed_mid_run_training_goes_on_and_sync_completes_it(
    mlflow_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, lost
) -> None:
    out = tmp_path / "run"
    fault_at_epoch(monkeypatch, {2: mlflow_server.kill})  # MLflow gets epoch 1, then nothing
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="mnist_np.tracking"):
        result = run(compose(small_overrides(mlflow_server.url, "trainer.epochs=3")), output_dir=out)
    elapsed = time.monotonic() - started

    # The training went on, with one warning, and wrote everything to its output dir.
    assert elapsed < 90, f"a dead server stalled the run for {elapsed:.0f} s"
    warnings = [r.getMessage() for r in caplog.records if "stopped answering" in r.getMessage()]
    assert len(warnings) == 1 and f"python scripts/sync.py {out}" in warnings[0]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert (json.loads((out / "summary.json").read_text())["metrics"]["test_accuracy"]
            == result.metrics["test_accuracy"] > 0.5)
    assert (out / "weights" / "final.npz").exists() and (out / "plots" / "loss_curves.png").exists()
    journal = read_journal(out / JOURNAL_FILE)
    assert journal.end is not None and journal.end["status"] == "FINISHED" and OFFLINE_TAG in journal.tags

    # MLflow has only what it got before the kill: the run is still RUNNING, epoch 1 only.
    mlflow_server.restart()
    client = MlflowClient(mlflow_server.url)
    assert client.get_run(result.run_id).info.status == "RUNNING"
    assert steps(client, result.run_id, "train_loss") == [1]
    assert mlflow_gaps(client, result.run_id, out)["metrics"] > 0

    proc = sync_cli(out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{out}: run {result.run_id}: uploaded ") and "status FINISHED" in proc.stdout

    r = client.get_run(result.run_id)
    assert r.info.status == "FINISHED" and "failure_reason" not in r.data.tags
    for key in PER_EPOCH:
        assert steps(client, result.run_id, key) == [1, 2, 3], key
    assert r.data.metrics["test_accuracy"] == result.metrics["test_accuracy"]
    assert r.data.tags["weights_sha256"] == json.loads((out / "summary.json").read_text())["weights_sha256"]
    assert OFFLINE_TAG in r.data.tags  # the interruption stays on record
    assert len(r.outputs.model_outputs) == 1 and len(r.inputs.dataset_inputs) == 1
    gaps = mlflow_gaps(client, result.run_id, out)
    lost.record(runs=0, metrics=gaps["metrics"])
    assert gaps == {"metrics": 0, "duplicates": 0, "files": 0}

    # Idempotent: a second sync finds nothing to send and duplicates nothing.
    again = sync_output_dir(out)
    assert again.sent == 0 and again.line().endswith("already complete"), again.line()
    assert mlflow_gaps(client, result.run_id, out)["duplicates"] == 0
    assert len(client.get_run(result.run_id).outputs.model_outputs) == 1


@pytest.mark.slow
@pytest.mark.fault("tracking faults", "caught up")
def test_server_back_before_the_end_the_run_catches_up_by_itself(
    mlflow_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lost
) -> None:
    out = tmp_path / "run"
    fault_at_epoch(monkeypatch, {2: mlflow_server.kill, 3: mlflow_server.restart})
    result = run(compose(small_overrides(mlflow_server.url, "trainer.epochs=3", "mlflow.log_plots=false")),
                 output_dir=out)
    client = MlflowClient(mlflow_server.url)
    r = client.get_run(result.run_id)
    assert r.info.status == "FINISHED" and OFFLINE_TAG in r.data.tags
    gaps = mlflow_gaps(client, result.run_id, out)
    lost.record(runs=0, metrics=gaps["metrics"])
    assert gaps == {"metrics": 0, "duplicates": 0, "files": 0}
    assert sync_output_dir(out).sent == 0


@pytest.mark.fault("tracking faults", "synced")
def test_a_run_killed_before_it_wrote_its_run_file_is_synced_into_itself_not_a_copy(tracking_uri: str,
                                                                                    tmp_path: Path) -> None:
    """Killed between MLflow creating its run and mlflow_run.json: sync finds that run by its dir and name."""
    out = tmp_path / "run"
    made = tracker.MlflowTracker(tracking_uri, "tests", journal=out / JOURNAL_FILE)
    out.mkdir()
    run_id = made.start("mlp16-sgd-lr0.1-bs128", {"seed": "0"}, {OUTPUT_DIR_TAG: str(out)})
    made.log_metrics({"val_loss": 0.5}, step=1)
    made.journal.note_end("FINISHED", None)  # the rest only reached the journal
    assert not (out / "mlflow_run.json").exists()

    report = sync_output_dir(out)
    client = MlflowClient(tracking_uri)
    (only,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert report.run_id == run_id == only.info.run_id and not report.created and only.info.status == "FINISHED"
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == run_id
    assert sync_output_dir(out).sent == 0


@pytest.mark.fault("tracking faults", "new run")
def test_sync_into_a_store_without_the_run_creates_it_once(tracking_uri: str, tmp_path: Path, lost) -> None:
    out = tmp_path / "run"
    original = run(compose(small_overrides(tracking_uri, "trainer.epochs=1", "mlflow.log_plots=false")), output_dir=out)
    other = migrated_store(tmp_path / "other" / "mlflow.db")

    proc = sync_cli(out, "--tracking-uri", other)
    assert proc.returncode == 0, proc.stderr
    assert "(new run): uploaded " in proc.stdout and "status FINISHED" in proc.stdout
    info = json.loads((out / "mlflow_run.json").read_text())
    assert (info["tracking_uri"] == other and info["previous_run_id"] == original.run_id
            and info["run_id"] != original.run_id)

    client = MlflowClient(other)
    (copy,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert copy.info.run_id == info["run_id"] and copy.info.status == "FINISHED"
    assert copy.info.run_name == "mlp128-sgd-lr0.1-bs128" and copy.data.params["trainer.epochs"] == "1"
    gaps = mlflow_gaps(client, copy.info.run_id, out)
    lost.record(runs=0, metrics=gaps["metrics"])
    assert gaps == {"metrics": 0, "duplicates": 0, "files": 0}

    again = run_script("sync", str(out), "--tracking-uri", other)  # its main() here: the command ran above
    assert again.returncode == 0 and again.stdout.strip().endswith("already complete"), again.stdout
    assert len(client.search_runs([copy.info.experiment_id])) == 1
    assert MlflowClient(tracking_uri).get_run(original.run_id).info.status == "FINISHED"  # the original is untouched


@pytest.mark.slow
@pytest.mark.fault("tracking faults", "sweep copied")
def test_a_sweep_synced_into_another_store_keeps_its_parent_and_children(tmp_path: Path, lost) -> None:
    """The members become children of a parent made in the new store, not of the original store's parent."""
    original = migrated_store(tmp_path / "first" / "mlflow.db")
    other = migrated_store(tmp_path / "other" / "mlflow.db")
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run(
        [PYTHON, str(TRAIN_SCRIPT), "--multirun", "model.hidden_size=16,32", f"mlflow.tracking_uri={original}",
         "mlflow.experiment_name=tests", "mlflow.log_plots=false", "data.train_limit=1000", "data.val_size=500",
         "trainer.epochs=1", "trainer.progress=false", f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first_parent = json.loads((sweep_dir / "mlflow_sweep.json").read_text())["parent_run_id"]

    # One member first: a child of a parent made there; the sweep's own pointer stays on the original store.
    one = run_script("sync", str(sweep_dir / "0"), "--tracking-uri", other)  # main() here; the sweep's is a command
    assert one.returncode == 0 and "(new run)" in one.stdout, one.stderr
    pointer = json.loads((sweep_dir / "mlflow_sweep.json").read_text())
    assert pointer["tracking_uri"] == original and pointer["parent_run_id"] == first_parent
    member = json.loads((sweep_dir / "0" / "mlflow_run.json").read_text())["run_id"]
    assert MlflowClient(other).get_run(member).data.tags["mlflow.parentRunId"] == pointer["parents"][other]

    # Then the whole sweep: the same parent there, both members its children, summarised.
    synced = sync_cli(sweep_dir, "--tracking-uri", other)
    assert synced.returncode == 0, synced.stderr
    client = MlflowClient(other)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    lost.record(runs=len(runs) - 1 - len(children) + sum(c.info.status != "FINISHED" for c in children), metrics=0)
    assert parent.info.run_name == "sweep model.hidden_size=16,32" and parent.info.status == "FINISHED"
    assert parent.data.params["model.hidden_size"] == "16,32" and parent.data.metrics["members_finished"] == 2
    assert parent.data.tags["copied_from"] == f"{original} run {first_parent}"
    assert sorted(c.data.params["model.hidden_size"] for c in children) == ["16", "32"]
    assert all(c.info.status == "FINISHED" for c in children) and len(runs) == 3
    assert f"sweep 'sweep model.hidden_size=16,32' ({parent.info.run_id}): 2 of 2 members finished" in synced.stdout

    saved = json.loads((sweep_dir / "mlflow_sweep.json").read_text())
    assert saved["parent_run_id"] == parent.info.run_id and saved["tracking_uri"] == other
    assert saved["parents"] == {original: first_parent, other: parent.info.run_id}
    # Again, into the same store: nothing new (runs, parent or values).
    again = run_script("sync", str(sweep_dir), "--tracking-uri", other)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already complete") == 2, again.stdout
    assert len(client.search_runs([parent.info.experiment_id])) == 3
    # The original store still has its own sweep, untouched.
    assert MlflowClient(original).get_run(first_parent).info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.fault("tracking faults", "sweep unsynced")
def test_server_dying_during_the_sweeps_closing_calls_leaves_a_sync_hint_not_a_traceback(
    mlflow_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lost
) -> None:
    from mnist_np.experiment.sweep import session as sweep
    from mnist_np.experiment.sweep import summary as sweep_summary
    from mnist_np.experiment.sweep.info import SweepInfo
    from mnist_np.tracking.tracker import MlflowTracker

    parent = MlflowTracker(mlflow_server.url, "tests")
    parent.start("sweep seed=0,1", {}, {})
    monkeypatch.setattr(sweep.SESSION, "open",
                        SweepInfo(parent.run_id, mlflow_server.url, "tests", "sweep seed=0,1", str(tmp_path)))
    monkeypatch.setattr(sweep.SESSION, "unsynced", None)
    real = sweep_summary.child_runs

    def server_dies_first(*args):
        mlflow_server.kill()  # after the closing tracker connected, before its first call
        return real(*args)

    monkeypatch.setattr(sweep_summary, "child_runs", server_dies_first)
    assert sweep.SESSION.finish() is None
    # train.py prints it in one line, with sync.py <sweep dir>.
    assert sweep.SESSION.unsynced and "\n" not in sweep.SESSION.unsynced

    # Back up: syncing the sweep dir closes the parent with the summary.
    mlflow_server.restart()
    monkeypatch.setattr(sweep_summary, "child_runs", real)
    summary = sweep_summary.close_sweep(SweepInfo.load(tmp_path) or SweepInfo(parent.run_id, mlflow_server.url, "tests",
                                                                                  "sweep seed=0,1", str(tmp_path)))
    status = MlflowClient(mlflow_server.url).get_run(parent.run_id).info.status
    lost.record(runs=int(status == "RUNNING"), metrics=0)
    assert summary.total == 0 and status == "FAILED"  # no member ever joined: "all 0 members failed"


@pytest.mark.fault("tracking faults", "one line")
def test_sync_errors_are_one_line(tmp_path: Path) -> None:
    from helpers.servers import free_port

    proc = run_script("sync", str(tmp_path))  # main() here; the second error, after MLflow's import, is a command
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {tmp_path} holds no {JOURNAL_FILE}") and proc.stderr.count("\n") == 1

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    start = {"op": "start", "run_name": "r", "params": {}, "tags": {}, "experiment_name": "tests",
             "tracking_uri": f"http://127.0.0.1:{free_port()}", "start_time": 0}
    (run_dir / JOURNAL_FILE).write_text(json.dumps(start) + "\n")
    started = time.monotonic()
    proc = sync_cli(run_dir)
    assert time.monotonic() - started < 30
    assert (proc.returncode == 1 and proc.stderr.startswith("error: MLflow server http://127.0.0.1:")
            and proc.stderr.count("\n") == 1)
