"""The cluster recipe for real: a sweep sent to Slurm, a member preempted and requeued.

A throwaway one-node Slurm (the ``slurm`` fixture: Debian's munge,
slurmctld and slurmd on 127.0.0.1), the team server of docs/clusters.md (an ``mlflow
server`` on a throwaway PostgreSQL), and ``scripts/train.py --multirun
+sweep=slurm`` as that page writes it, the server reached through
``MLFLOW_TRACKING_URI``. While member 0 trains, it gets what Slurm sends a
job it preempts (SIGTERM, then submitit's SIGUSR2 -- as submitit's own
``SlurmJob._interrupt`` does): submitit requeues it, and its next attempt
resumes from its newest checkpoint into the same MLflow run, ending
bit-identical to member 1, which ran the same config uninterrupted.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PYTHON, TRAIN_SCRIPT, LiveServer
from helpers.stores import migrated_store
from mnist_np.tracking.journal import JOURNAL_FILE, RUN_FILE
from mnist_np.train.stepper import shard_count
from test_load import check_members
from test_sweeps import parent_and_children

pytestmark = pytest.mark.slow
EPOCHS = 16
CPUS = 2  # conf/sweep/slurm.yaml's cpus_per_task: each member trains with 2 BLAS threads (2 shard processes)


def epochs_done(member_dir: Path) -> int:
    metrics = member_dir / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def journal_ops(member_dir: Path) -> list[str]:
    """The member's journal, as its ops (``end`` with its status): how its run went, attempt after attempt."""
    ops = [json.loads(line) for line in (member_dir / JOURNAL_FILE).read_text().splitlines()]
    return [f"end {o['status']}" if o["op"] == "end" else o["op"] for o in ops if o["op"] in ("start", "reopen", "end")]


@pytest.mark.fault("sweep killed", "preempted")
def test_a_preempted_slurm_member_resumes_into_its_own_run(slurm, postgres, tmp_path: Path, lost) -> None:
    server = LiveServer(tmp_path / "server", backend_store_uri=postgres.create_database("cluster"))
    sweep_dir = tmp_path / "sweep"
    # Two members of one config (notes only label them): whatever differs between them is the preemption's doing.
    cmd = [PYTHON, str(TRAIN_SCRIPT), "--multirun", "+sweep=slurm", f"hydra.launcher.partition={slurm.partition}",
           "hydra.launcher.mem_gb=1", "notes=preempted,uninterrupted", "mlflow.experiment_name=sweeps",
           "data.train_limit=30000", "data.val_size=1000", f"trainer.epochs={EPOCHS}", "trainer.progress=false",
           "mlflow.log_plots=false", f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, **slurm.env, "MLFLOW_TRACKING_URI": server.url}  # as docs/clusters.md exports it
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while epochs_done(sweep_dir / "0") < 2:  # a checkpoint written, the training going on
            assert proc.poll() is None and time.monotonic() < deadline, (
                (proc.stdout.read() if proc.poll() is not None else "")[-3000:] + slurm.log_tail())
            time.sleep(0.05)
        (job,) = [j["id"] for j in slurm.jobs() if j["id"].endswith("_0")]
        slurm.run("scancel", job, "--signal", "SIGTERM")
        slurm.run("scancel", job, "--signal", "USR2")
        preempted_at = epochs_done(sweep_dir / "0")
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server_url = server.url
    try:
        assert proc.returncode == 0, out[-3000:] + slurm.log_tail()
        assert preempted_at < EPOCHS, "member 0 ended before the signal came: no preemption happened"
        client, parent, children = parent_and_children(server_url)
        assert parent.info.status == "FINISHED" and parent.data.metrics["members_finished"] == 2
        # Both members complete (every per-epoch metric at steps 1..EPOCHS, once each), nothing missing.
        check_members(client, children, epochs=EPOCHS, lost=lost, members=2)
        by_note = {c.data.tags["mlflow.note.content"]: c for c in children}
        preempted, uninterrupted = by_note["preempted"], by_note["uninterrupted"]

        # Slurm requeued the job once; the member's run ended KILLED, was reopened by the second attempt, FINISHED.
        restarts = slurm.run("scontrol", "show", "job", job).stdout
        assert "Restarts=1" in restarts, restarts
        member = sweep_dir / "0"
        assert journal_ops(member) == ["start", "end KILLED", "reopen", "end FINISHED"], journal_ops(member)
        assert json.loads((member / RUN_FILE).read_text())["run_id"] == preempted.info.run_id
        assert 1 <= int(preempted.data.tags["resumed_from_epoch"]) < EPOCHS
        assert ("resumed_from_epoch" not in uninterrupted.data.tags
                and journal_ops(sweep_dir / "1") == ["start", "end FINISHED"])

        # Bit-identical to the uninterrupted member: the weights and every epoch's validation score.
        assert preempted.data.tags["weights_sha256"] == uninterrupted.data.tags["weights_sha256"]
        history = {c: [m.value for m in sorted(client.get_metric_history(c.info.run_id, "val_loss"),
                                               key=lambda m: m.step)]
                   for c in (preempted, uninterrupted)}
        assert history[preempted] == history[uninterrupted]
        # The preset's cores: the members trained in shard processes, which Slurm's signals reached too.
        shards = str(shard_count(128, CPUS))
        assert preempted.data.tags["train_shards"] == uninterrupted.data.tags["train_shards"] == shards
    finally:
        server.stop()


def test_a_packed_grid_runs_as_three_slurm_jobs_that_take_its_members(slurm, tmp_path: Path) -> None:
    """``hydra.launcher.workers=3``: a 12-member grid as 3 Slurm jobs, each taking members until none is left."""
    sweep_dir = tmp_path / "sweep"
    uri = migrated_store(tmp_path / "store" / "mlflow.db")
    cmd = [PYTHON, str(TRAIN_SCRIPT), "--multirun", "+sweep=slurm", f"hydra.launcher.partition={slurm.partition}",
           "hydra.launcher.workers=3", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
           "seed=range(6)", "model.hidden_size=16,32", f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=sweeps",
           "data.train_limit=1000", "data.val_size=500", "trainer.epochs=1", "trainer.progress=false",
           "mlflow.log_plots=false", f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.Popen(cmd, env={**os.environ, **slurm.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, stdin=subprocess.DEVNULL)
    seen: set[str] = set()  # the array tasks squeue showed while the sweep ran
    try:
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            seen |= {j["id"] for j in slurm.jobs() if j["name"] == "train"}
            time.sleep(0.2)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-3000:] + slurm.log_tail()
    # This cluster keeps no accounting: submitit's warning that sacct failed shows once, not at every poll, and
    # not three times over (its own two handlers and Hydra's).
    assert out.count("Bypassing sacct error") == 1, out
    client, parent, children = parent_and_children(uri)
    assert parent.info.status == "FINISHED" and parent.data.metrics["members_finished"] == 12
    assert len(children) == 12 and all(c.info.status == "FINISHED" for c in children)
    assert sorted(int(c.data.tags["sweep_job_num"]) for c in children) == list(range(12))
    # Three Slurm jobs (one array of 3 tasks) ran them all: squeue showed 3, submitit kept 3 results.
    assert len(seen) == 3 and {task.rsplit("_", 1)[1] for task in seen} == {"0", "1", "2"}, seen
    results = sorted((sweep_dir / ".submitit").rglob("*_result.pkl"))
    assert len(results) == 3, results
    pids = {c.data.tags["pid"] for c in children}
    assert len(pids) <= 3  # members ran inside the 3 worker jobs' processes, not one process each
    ledger = json.loads((sweep_dir / "ledger.json").read_text())["jobs"]
    assert all(j["done"] for j in ledger) and {j["worker"] for j in ledger} <= {0, 1, 2}
