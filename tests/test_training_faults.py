"""A full disk while writing a checkpoint or weights never corrupts what was written before.

The fault is injected at the file level: the file a write targets accepts a
few kilobytes, then fails with ``OSError(ENOSPC)`` -- what a full disk does
mid-write -- so a partial temp file really exists on disk when the error hits.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import mlflow_gaps, small_overrides
from mnist_np.experiment.config.compose import compose
from mnist_np.experiment.run.single import run
from mnist_np.nn.weights import load_weights, save_weights
from mnist_np.train.checkpoint import latest_checkpoint, load_state


class FillingDisk:
    """A writable file that takes ``budget`` bytes, then fails like a full disk."""

    def __init__(self, f: Any, budget: int) -> None:
        self._f, self._budget = f, budget

    def write(self, data: bytes) -> int:
        room = max(self._budget, 0)
        self._budget -= len(data)
        if self._budget < 0:
            self._f.write(bytes(data)[:room])  # the part that fit is on disk
            self._f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> "FillingDisk":
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def disk_full_for(monkeypatch: pytest.MonkeyPatch, name_part: str, budget: int = 4096) -> list[str]:
    """Make writes through ``os.fdopen`` to files whose name contains ``name_part`` hit a full disk.

    Returns the list of paths that failed (filled in as it happens).
    """
    real = os.fdopen
    failed: list[str] = []

    def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real(fd, mode, *args, **kwargs)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if "w" in mode and name_part in Path(path).name:
            failed.append(path)
            return FillingDisk(f, budget)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    return failed


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.fault("training faults", "file kept")
def test_full_disk_while_overwriting_weights_keeps_the_old_file(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    old = {"W1": rng.random((784, 32), dtype=np.float32), "b1": np.zeros(32, np.float32),
           "W2": rng.random((32, 10), dtype=np.float32), "b2": np.zeros(10, np.float32)}
    path = save_weights(tmp_path / "final.npz", old, "model: {hidden_size: 32}\n")
    before = path.read_bytes()

    failed = disk_full_for(monkeypatch, "final.npz")
    new = {k: v + 1 for k, v in old.items()}
    with pytest.raises(OSError) as e:
        save_weights(path, new, "model: {hidden_size: 32}\n")
    assert e.value.errno == errno.ENOSPC and len(failed) == 1
    monkeypatch.undo()

    assert path.read_bytes() == before and leftovers(tmp_path) == []
    params, config = load_weights(path)
    assert all(np.array_equal(params[k], old[k]) for k in old) and "hidden_size: 32" in config


@pytest.mark.slow
@pytest.mark.fault("training faults", "file kept")
def test_full_disk_mid_checkpoint_keeps_the_previous_one_and_the_run_resumes(
    tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lost
) -> None:
    out = tmp_path / "run"
    cfg = compose(small_overrides(tracking_uri, "trainer.epochs=3", "mlflow.log_plots=false"))
    failed = disk_full_for(monkeypatch, "epoch_0002.npz")
    with pytest.raises(OSError):
        run(cfg, output_dir=out)
    monkeypatch.undo()  # space freed
    assert len(failed) == 1 and failed[0].endswith(".tmp")

    client = MlflowClient(tracking_uri)
    (r,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert r.info.status == "FAILED" and "No space left on device" in r.data.tags["failure_reason"]
    checkpoints = out / "checkpoints"
    assert leftovers(checkpoints) == [] and latest_checkpoint(checkpoints).name == "epoch_0001.npz"
    state = load_state(latest_checkpoint(checkpoints))
    assert state.epoch == 1 and len(state.result.history) == 1

    # The previous checkpoint is good enough to go on from: resume and finish the same run.
    result = run(compose(small_overrides(tracking_uri, f"resume={out}")))
    assert result.run_id == r.info.run_id
    done = client.get_run(r.info.run_id)
    gaps = mlflow_gaps(client, r.info.run_id, out)
    lost.record(runs=int(done.info.status != "FINISHED"), metrics=gaps["metrics"])
    assert (done.info.status == "FINISHED"
            and [m.step for m in client.get_metric_history(r.info.run_id, "val_loss")] == [1, 2, 3])
    assert gaps == {"metrics": 0, "duplicates": 0, "files": 0}


@pytest.mark.slow
@pytest.mark.fault("training faults", "KILLED")
def test_ctrl_c_closes_the_run_killed_with_a_checkpoint_and_resume_finishes_it(tracking_uri: str, tmp_path: Path,
                                                                               lost) -> None:
    import json
    import signal
    import subprocess
    import time

    from conftest import PYTHON, TRAIN_SCRIPT

    out = tmp_path / "run"
    args = [f"mlflow.tracking_uri={tracking_uri}", "mlflow.experiment_name=tests", "mlflow.log_plots=false",
            "trainer.progress=false"]
    # A terminal's Ctrl-C reaches a program that handles SIGINT as Python does by default. A suite started in the
    # background (`make test &`) ignores SIGINT, and its children inherit that: give the child the default back.
    proc = subprocess.Popen([PYTHON, str(TRAIN_SCRIPT), *args, "data.train_limit=20000", "trainer.epochs=20",
                             f"hydra.run.dir={out}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # Wait for the first checkpoint: metrics.jsonl is written a moment
        # before it, and an interrupt between the two has nothing to resume.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and latest_checkpoint(out / "checkpoints") is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    assert proc.returncode == 130, err[-3000:]
    saved_at = latest_checkpoint(out / "checkpoints")
    assert err.strip().splitlines()[-1] == (
        f"error: interrupted: run {run_id} is closed KILLED; its last checkpoint is {saved_at}; "
        f"continue it with: python scripts/train.py resume={run_id}")
    client = MlflowClient(tracking_uri)
    killed = client.get_run(run_id)
    assert killed.info.status == "KILLED" and f"resume={run_id}" in killed.data.tags["failure_reason"]
    saved = load_state(saved_at)
    assert 1 <= saved.epoch < 20

    resumed = subprocess.run([PYTHON, str(TRAIN_SCRIPT), *args, f"resume={run_id}",
                              f"hydra.run.dir={tmp_path / 'resume-command'}"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = client.get_run(run_id)
    gaps = mlflow_gaps(client, run_id, out)
    lost.record(runs=int(done.info.status != "FINISHED"), metrics=gaps["metrics"])
    assert (done.info.status == "FINISHED"
            and [m.step for m in client.get_metric_history(run_id, "train_loss")] == list(range(1, 21)))
    assert gaps == {"metrics": 0, "duplicates": 0, "files": 0}
    # The run's own train.log (and its artifact) goes on where it stopped: both commands' lines, in order.
    log_text = (out / "train.log").read_text()
    assert f"resuming run {run_id} in {out} after epoch {saved.epoch}" in log_text
    assert log_text.index("epoch  1/20") < log_text.index("resuming run") < log_text.index("epoch 20/20")
    assert "epoch 20/20" in (tmp_path / "resume-command" / "train.log").read_text()  # the command's own Hydra log too
    uploaded = Path(client.download_artifacts(run_id, "train.log", str(tmp_path / "artifact"))).read_text()
    assert "resuming run" in uploaded and "epoch 20/20" in uploaded and uploaded == log_text[: len(uploaded)]
