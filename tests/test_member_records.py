"""Every member of a sweep leaves a record: a FAILED child with its reason, counted, whatever stopped it.

As a user meets them, with ``scripts/train.py --multirun`` as a subprocess
and a real SQLite store: a member whose data cannot be obtained, a member
whose own store is unreachable, and a joblib worker killed with SIGKILL in
the middle of its member (the OOM killer's way).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, TRAIN_SCRIPT
from helpers.servers import free_port
from helpers.stores import migrated_store
from mnist_np.data import load_dataset
from mnist_np.data.cache import default_cache_dir
from test_sweeps import check_summary

pytestmark = pytest.mark.slow
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def multirun(tmp_path: Path, *args: str, env: dict[str, str] | None = None, epochs: int = 1, train_limit: int = 1000,
             wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [PYTHON, str(TRAIN_SCRIPT), "--multirun", *args, "mlflow.experiment_name=members", "mlflow.log_plots=false",
           f"data.train_limit={train_limit}", "data.val_size=500", f"trainer.epochs={epochs}", "trainer.progress=false",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    full_env = {**os.environ, **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=full_env)


def sweep_runs(uri: str):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("members").experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return client, parents[0], children


def the_failed_line(stderr: str, failed: int, total: int) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {failed} of {total} sweep members failed"], stderr[-3000:]


@pytest.mark.fault("sweep members", "recorded")
def test_a_member_whose_data_cannot_be_obtained_is_a_failed_child(tmp_path: Path) -> None:
    if FASHION_SYSTEM_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST is installed in {FASHION_SYSTEM_DIR}: it can always be obtained here")
    load_dataset("mnist")  # into the cache, if it was not there
    mnist = default_cache_dir() / "mnist"
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    uri = migrated_store(tmp_path / "store" / "mlflow.db")
    # MNIST from data.dir; Fashion-MNIST from nowhere: data.dir holds MNIST's files, the cache is empty,
    # no mirror answers.
    proc = multirun(tmp_path, "data=mnist,fashion_mnist", f"data.dir={mnist}", f"mlflow.tracking_uri={uri}",
                    env={"MNIST_NP_DATA_DIR": str(empty)})
    assert proc.returncode == 1, proc.stderr[-3000:]
    the_failed_line(proc.stderr, 1, 2)
    client, parent, children = sweep_runs(uri)
    assert sorted(c.data.params["data.name"] for c in children) == ["fashion_mnist", "mnist"]
    failed = next(c for c in children if c.data.params["data.name"] == "fashion_mnist")
    assert (failed.info.status == "FAILED"
            and failed.data.tags["failure_reason"].startswith("DataError: could not obtain dataset"))
    assert failed.data.tags["sweep_job_num"] == "1" and failed.info.run_name == "fashion_mnist-mlp128-sgd-lr0.1-bs128"
    check_summary(client, parent, children, ["data"], finished=1, failed=1)
    rows = (tmp_path / "sweep" / "sweep_summary" / "summary.csv").read_text()
    assert "DataError: could not obtain dataset 'fashion_mnist'" in rows  # the reason, in the parent's table

    # The data found (the cache the test suite uses holds Fashion-MNIST), the sweep continued: the member trains,
    # into its run.
    load_dataset("fashion_mnist")
    again = subprocess.run([PYTHON, str(TRAIN_SCRIPT), "--multirun", f"resume={tmp_path / 'sweep'}"],
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "MNIST_NP_DATA_DIR": str(default_cache_dir())})
    assert again.returncode == 0, again.stderr[-3000:]
    client, parent, children = sweep_runs(uri)
    assert {c.info.run_id: c.info.status for c in children} == {c.info.run_id: "FINISHED" for c in children}
    assert failed.info.run_id in {c.info.run_id for c in children} and len(children) == 2


@pytest.mark.fault("sweep members", "recorded")
def test_a_member_whose_store_is_unreachable_is_recorded_in_the_sweeps_store(tmp_path: Path) -> None:
    uri = migrated_store(tmp_path / "store" / "mlflow.db")
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    # The sweep's parent uses the store MLFLOW_TRACKING_URI names; member 1 was sent to one that never answers.
    proc = multirun(tmp_path, f"mlflow.tracking_uri={uri},{nobody}", env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 1, proc.stderr[-3000:]
    the_failed_line(proc.stderr, 1, 2)
    client, parent, children = sweep_runs(uri)
    assert len(children) == 2
    failed = next(c for c in children if c.data.tags["sweep_job_num"] == "1")
    assert failed.info.status == "FAILED" and "TrackingUnavailable" in failed.data.tags["failure_reason"]
    assert nobody in failed.data.tags["failure_reason"]
    assert parent.data.metrics["members"] == 2 and parent.data.metrics["members_failed"] == 1
    # Recorded from the member's own dir: its journal holds the record, its run file the run in the sweep's store.
    run_file = json.loads((tmp_path / "sweep" / "1" / "mlflow_run.json").read_text())
    assert run_file["run_id"] == failed.info.run_id and run_file["tracking_uri"] == uri


@pytest.mark.fault("sweep members", "recorded")
def test_a_sigkilled_joblib_worker_leaves_a_failed_child_and_the_sweep_goes_on(tmp_path: Path) -> None:
    uri = migrated_store(tmp_path / "store" / "mlflow.db")
    members = 4
    proc = multirun(tmp_path, "+sweep=parallel", f"seed=range({members})", f"mlflow.tracking_uri={uri}",
                    epochs=3, train_limit=20000, wait=False)
    victim_dir = tmp_path / "sweep" / "1"
    try:
        deadline = time.monotonic() + 300
        metrics = victim_dir / "metrics.jsonl"
        while time.monotonic() < deadline and proc.poll() is None and not (metrics.exists() and metrics.read_text()):
            time.sleep(0.05)
        start = json.loads((victim_dir / "mlflow_journal.jsonl").read_text().splitlines()[0])
        pid = int(start["tags"]["pid"])
        os.kill(pid, signal.SIGKILL)  # the worker process running member 1, mid-training
        _, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    client, parent, children = sweep_runs(uri)
    by_job = {int(c.data.tags["sweep_job_num"]): c for c in children}
    assert sorted(by_job) == list(range(members)), sorted(by_job)  # every member has its one child
    victim = by_job[1]
    assert victim.info.status == "FAILED" and "killed" in victim.data.tags["failure_reason"]
    assert victim.data.tags["pid"] == str(pid)
    failed = [j for j, c in by_job.items() if c.info.status != "FINISHED"]
    assert all(by_job[j].info.status == "FINISHED" for j in (2, 3))  # started after the kill: the sweep went on
    assert proc.returncode == 1, err[-3000:]
    the_failed_line(err, len(failed), members)
    assert parent.data.metrics["members"] == members and parent.data.metrics["members_failed"] == len(failed)
    assert "Traceback" not in err


@pytest.mark.fault("sweep members", "recorded")
def test_a_killed_submitit_job_leaves_a_failed_child_and_the_others_are_waited_for(tmp_path: Path) -> None:
    """A submitit job killed mid-run: its member is a FAILED child, the sweep waits for the other job and counts
    both."""
    uri = migrated_store(tmp_path / "store" / "mlflow.db")
    members = 2
    proc = multirun(tmp_path, "hydra/launcher=mnist_np_submitit_local", "hydra.launcher.timeout_min=10",
                    f"seed=range({members})", f"mlflow.tracking_uri={uri}", epochs=3, train_limit=20000, wait=False)
    victim_dir = tmp_path / "sweep" / "0"  # the first job: Hydra's own launcher stops collecting right there
    try:
        deadline = time.monotonic() + 300
        metrics = victim_dir / "metrics.jsonl"
        while time.monotonic() < deadline and proc.poll() is None and not (metrics.exists() and metrics.read_text()):
            time.sleep(0.05)
        pid = int(json.loads((victim_dir / "mlflow_journal.jsonl").read_text().splitlines()[0])["tags"]["pid"])
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    client, parent, children = sweep_runs(uri)
    by_job = {int(c.data.tags["sweep_job_num"]): c for c in children}
    assert sorted(by_job) == list(range(members))
    assert by_job[0].info.status == "FAILED" and "killed" in by_job[0].data.tags["failure_reason"]
    assert by_job[1].info.status == "FINISHED", [c.info.status for c in children]  # waited for, not abandoned
    assert proc.returncode == 1, err[-3000:]
    the_failed_line(err, 1, members)
    assert parent.data.metrics["members"] == members and parent.data.metrics["members_failed"] == 1
