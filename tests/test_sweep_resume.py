"""A grid sweep killed with SIGKILL and continued with ``--multirun resume=``: nothing lost, nothing trained twice.

End to end as a user runs it: scripts/train.py as a subprocess in its own
process group (killed whole, as a lost node or an OOM kill would), a real
SQLite MLflow store in a temp dir, 20,000 training images so that an epoch
lasts long enough to be killed in. No second, uninterrupted sweep is needed
for comparison: the sweep holds its own reference (see ``SEEDS``).
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

from conftest import PYTHON, TRAIN_SCRIPT, mlflow_gaps, small_overrides
from helpers.stores import migrated_store
from mnist_np.experiment.config.compose import compose
from mnist_np.experiment.run import single
from mnist_np.experiment.sweep.resume import continued_member
from mnist_np.tracking.journal import RUN_FILE

# Member 4 repeats member 2's config and has not started when the sweep is killed (with either
# launcher: joblib runs two members at a time), so it trains uninterrupted: the reference that the
# resumed member 2 must equal bit for bit.
SEEDS = (0, 1, 2, 3, 2)
EPOCHS = 3


def sweep_command(tmp_path: Path, name: str, launcher: str) -> list[str]:
    return [
        PYTHON, str(TRAIN_SCRIPT), "--multirun", *(["+sweep=parallel"] if launcher == "joblib" else []),
        f"seed={','.join(map(str, SEEDS))}", f"mlflow.tracking_uri={migrated_store(tmp_path / 'store' / 'mlflow.db')}",
        f"mlflow.experiment_name={name}", "mlflow.log_plots=false", "data.train_limit=20000", "data.val_size=2000",
        f"trainer.epochs={EPOCHS}", "trainer.progress=false", f"hydra.sweep.dir={tmp_path / name}",
    ]


def runs_of(client: MlflowClient, name: str):
    """(the parent run, the children by job number) of the sweep in experiment ``name``."""
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    jobs = [int(c.data.tags["sweep_job_num"]) for c in children]
    assert len(set(jobs)) == len(jobs), jobs  # one run per member, never a second
    return parents[0], dict(zip(jobs, children))


def kill_mid_sweep(cmd: list[str], sweep_dir: Path) -> None:
    """Start the sweep; SIGKILL its whole process group once members 0 and 1 finished and member 2 is into its second
    epoch."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if all((sweep_dir / str(j) / "summary.json").exists() for j in (0, 1)) and \
                    (sweep_dir / "2" / "checkpoints" / "epoch_0001.npz").exists():
                break
            time.sleep(0.02)
        time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (sweep_dir / "2" / "summary.json").exists(), "member 2 finished before the sweep could be killed"


@pytest.mark.slow
@pytest.mark.fault("sweep killed", "resumed")
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_killed_grid_sweep_resumes_without_training_anything_twice(tmp_path: Path, launcher: str, lost) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    kill_mid_sweep(sweep_command(tmp_path, "killed", launcher), tmp_path / "killed")
    parent, before = runs_of(client, "killed")
    assert parent.info.status == "RUNNING" and before[2].info.status == "RUNNING"
    kept = {j: (before[j].info.start_time, before[j].info.end_time,
                client.get_metric_history(before[j].info.run_id, "val_accuracy"))
            for j in (0, 1)}
    assert all(before[j].info.status == "FINISHED" for j in (0, 1)) and 4 not in before

    # By the sweep dir with the basic launcher, by the parent run id with joblib (the store named on the command line).
    target = str(tmp_path / "killed") if launcher == "basic" else parent.info.run_id
    resumed = subprocess.run([PYTHON, str(TRAIN_SCRIPT), "--multirun", f"resume={target}",
                              f"mlflow.tracking_uri=sqlite:///{tmp_path / 'store' / 'mlflow.db'}"],
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-6000:] + resumed.stderr[-3000:]
    after, members = runs_of(client, "killed")
    lost.record(runs=sum(c.info.status != "FINISHED" for c in members.values()) + len(SEEDS) - len(members),
                metrics=sum(EPOCHS - len(client.get_metric_history(c.info.run_id, "val_accuracy"))
                            for c in members.values()))
    assert (after.info.run_id == parent.info.run_id and after.info.status == "FINISHED"
            and after.data.tags["resumed"] == "true")
    assert sorted(members) == list(range(len(SEEDS))) and all(c.info.status == "FINISHED" for c in members.values())
    assert after.data.metrics["members"] == len(SEEDS) and after.data.metrics["members_finished"] == len(SEEDS)
    for j, (start, end, history) in kept.items():  # finished members were not trained again
        run = members[j]
        assert run.info.run_id == before[j].info.run_id and (run.info.start_time, run.info.end_time) == (start, end)
        assert client.get_metric_history(run.info.run_id, "val_accuracy") == history
    interrupted = members[2]
    assert (interrupted.info.run_id == before[2].info.run_id
            and interrupted.data.tags["resumed_from_epoch"] in ("1", "2"))
    for key in ("train_loss", "val_accuracy", "lr"):
        assert (sorted(m.step for m in client.get_metric_history(interrupted.info.run_id, key))
                == list(range(1, EPOCHS + 1)))
    # Bit-identical to the same config trained uninterrupted (member 4, which started after the kill).
    sha = {j: json.loads((tmp_path / "killed" / str(j) / "summary.json").read_text())["weights_sha256"] for j in (2, 4)}
    assert sha[2] == sha[4] and "resumed_from_epoch" not in members[4].data.tags
    assert (tmp_path / "killed" / "sweep_summary" / "summary.csv").read_text().count("FINISHED") == len(SEEDS)
    if launcher == "joblib":
        return  # a sweep that ran to its end is the same for any launcher: checked once, below

    again = subprocess.run([PYTHON, str(TRAIN_SCRIPT), "--multirun", f"resume={tmp_path / 'killed'}"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already ran to its end; nothing to resume" in again.stdout
    assert runs_of(client, "killed")[0].info.end_time == after.info.end_time


class Killed(BaseException):
    """The process dying at one line: nothing after it runs, and no handler of the project's catches it."""


@pytest.mark.fault("sweep killed", "run found")
@pytest.mark.parametrize("how", ["sweep member", "resume="])
def test_a_run_killed_before_it_wrote_down_its_mlflow_run_is_resumed_into_that_run(
    tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, lost
) -> None:
    """Killed between MLflow's making the run and ``mlflow_run.json``: a continued sweep (as a joblib worker killed
    there left it, member 3 of the test above) or ``resume=<dir>`` finds the run by its output dir and trains it,
    never a second run for the dir."""
    out = tmp_path / "run"

    def killed(*args: object, **kwargs: object) -> None:
        raise Killed

    monkeypatch.setattr(single, "write_run_file", killed)
    with pytest.raises(Killed):
        single.run(compose(small_overrides(tracking_uri, "mlflow.log_plots=false")), output_dir=out)
    monkeypatch.undo()
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tests").experiment_id
    (made,) = client.search_runs([experiment])
    assert made.info.status == "RUNNING" and not (out / RUN_FILE).exists()

    result = (continued_member(out) if how == "sweep member"
              else single.run(compose(small_overrides(tracking_uri, f"resume={out}"))))
    runs = client.search_runs([experiment])
    lost.record(runs=len(runs) - 1 + sum(r.info.status != "FINISHED" for r in runs))
    assert result is not None, "the member was run again as if it had never started"
    assert [r.info.run_id for r in runs] == [made.info.run_id] == [result.run_id]
    gaps = mlflow_gaps(client, made.info.run_id, out)
    lost.record(metrics=gaps["metrics"])
    assert runs[0].info.status == "FINISHED" and gaps == {"metrics": 0, "duplicates": 0, "files": 0}
    assert [m.step for m in client.get_metric_history(made.info.run_id, "val_accuracy")] == [1, 2]
