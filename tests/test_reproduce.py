"""Reproduce, checkpoint and resume: a run re-created bit for bit, a killed run continued."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, TRAIN_SCRIPT, small_overrides
from helpers.scripts import run_script
from mnist_np.common.paths import PROJECT_ROOT
from mnist_np.experiment.config.compose import compose, load_run_config
from mnist_np.experiment.config.schema import ConfigError
from mnist_np.experiment.run.single import run
from mnist_np.nn.model import MLP
from mnist_np.nn.optim import SGD, Adam
from mnist_np.nn.registry import ACTIVATIONS, INITIALIZERS
from mnist_np.nn.schedules import Schedule
from mnist_np.nn.weights import weights_sha256
from mnist_np.train.checkpoint import Checkpointer, latest_checkpoint, load_state, restore_rngs
from mnist_np.train.loop import FitResult, TrainSettings, fit

REPRODUCE = PROJECT_ROOT / "scripts" / "reproduce.py"


# --- the core: a checkpoint continues a training exactly -----------------------


OPTIMIZERS = {"adam": Adam, "sgd-nesterov": lambda: SGD(momentum=0.9, nesterov=True, weight_decay=5e-4)}


def _setup(optimizer: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((600, 784), dtype=np.float32)
    y = rng.integers(0, 10, 600)
    model = MLP.initialize([784, 32, 10], ACTIVATIONS["relu"](), INITIALIZERS["he"], np.random.default_rng(1),
                           dropout=0.2)
    rngs = {"shuffle": np.random.default_rng(2), "dropout": np.random.default_rng(3)}
    return x, y, model, OPTIMIZERS[optimizer](), rngs


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_fit_resumed_from_a_checkpoint_equals_an_uninterrupted_fit(tmp_path: Path, optimizer: str,
                                                                   threads: int) -> None:
    # Batch 100 of 600 training rows: 5 steps per epoch, an odd number, so the
    # resumed half starts where SGD's two state blocks stand the other way round.
    settings = TrainSettings(epochs=4, batch_size=100, threads=threads)
    sched = Schedule("cosine", 0.01, 4)

    x, y, model, opt, rngs = _setup(optimizer)
    fit(model, opt, sched, x[100:], y[100:], x[:100], y[:100], settings, rngs["shuffle"], rngs["dropout"])
    straight = weights_sha256(model.params)

    x, y, model, opt, rngs = _setup(optimizer)
    state = FitResult()
    ck = Checkpointer(tmp_path, opt, rngs, "cfg: 1", "run", epochs=2, keep=1)
    ck.bind(state)
    half = TrainSettings(epochs=2, batch_size=100, threads=threads)
    fit(model, opt, sched, x[100:], y[100:], x[:100], y[:100], half, rngs["shuffle"], rngs["dropout"], [ck], state)
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_0002.npz"]  # keep=1

    saved = load_state(latest_checkpoint(tmp_path))
    assert saved.epoch == 2 and len(saved.result.history) == 2 and saved.config_yaml == "cfg: 1"
    x, y, model, opt, rngs = _setup(optimizer)  # a fresh process: nothing carried over but the file
    model.load_params(saved.params)
    opt.load_state_dict(saved.optimizer)
    restore_rngs(rngs, saved.rng_states)
    result = fit(model, opt, sched, x[100:], y[100:], x[:100], y[:100], settings, rngs["shuffle"], rngs["dropout"],
                 result=saved.result)
    assert len(result.history) == 4
    assert weights_sha256(model.params) == straight


@pytest.mark.fault("security", "refused")
def test_a_run_config_is_checked_before_use() -> None:
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(compose(), resolve=True)
    assert load_run_config(text).model.hidden_size == 128
    for bad, fragment in [
        (text.replace("hidden_size: 128", "hidden_size: many"), "model.hidden_size"),
        (text + "payload:\n  _target_: os.system\n", "payload"),
        (text.replace("lr: 0.1", "lr: -1.0"), "optimizer.lr=-1.0 is not allowed"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            load_run_config(bad)


# --- end to end ------------------------------------------------------------------


def _train(tracking_uri: str, out: Path, *extra: str, wait: bool = True):
    cmd = [PYTHON, str(TRAIN_SCRIPT), f"mlflow.tracking_uri={tracking_uri}", "mlflow.experiment_name=tests",
           "mlflow.log_plots=false", "trainer.progress=false", f"hydra.run.dir={out}", *extra]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_reproduce_a_run_gives_identical_hashes(tracking_uri: str, tmp_path: Path) -> None:
    result = run(compose(small_overrides(tracking_uri, "mlflow.log_plots=false", "model.dropout=0.1")),
                 output_dir=tmp_path / "orig")
    proc = subprocess.run([PYTHON, str(REPRODUCE), result.run_id, "--tracking-uri", tracking_uri, "--output-dir",
                           str(tmp_path / "copy")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "verdict: IDENTICAL" in proc.stdout
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    copy = next(r for r in runs if r.data.tags.get("reproduces") == result.run_id)
    assert copy.data.tags["weights_sha256"] == client.get_run(result.run_id).data.tags["weights_sha256"]


@pytest.mark.slow
def test_reproduce_from_an_edited_config_names_the_difference(tracking_uri: str, tmp_path: Path) -> None:
    result = run(compose(small_overrides(tracking_uri, "mlflow.log_plots=false")), output_dir=tmp_path / "orig")
    config = result.output_dir / "config" / "config.yaml"
    config.write_text(config.read_text().replace("  lr: 0.1\n", "  lr: 0.05\n"))
    # reproduce.py's main() in this process (the command itself: test_reproduce_a_run_gives_identical_hashes).
    proc = run_script("reproduce", "--from-dir", str(result.output_dir), "--tracking-uri", tracking_uri,
                      "--output-dir", str(tmp_path / "copy"))
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "verdict: DIFFERENT -- first difference: train_loss at epoch 1" in proc.stdout
    assert "config differs: optimizer.lr: 0.1 -> 0.05" in proc.stdout


def test_reproduce_refuses_an_unknown_run(tracking_uri: str) -> None:
    proc = run_script("reproduce", "0123456789abcdef", "--tracking-uri", tracking_uri)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].startswith("error: no run '0123456789abcdef'")  # above it: MLflow's own log


@pytest.mark.slow
@pytest.mark.fault("training faults", "resumed")
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tracking_uri: str, tmp_path: Path) -> None:
    # 20,000 images: epochs long enough (~0.3 s) to be killed in the middle of one, at 40 % of the whole set's CPU.
    args = ("trainer.epochs=6", "data.train_limit=20000", "data.val_size=2000")
    straight = _train(tracking_uri, tmp_path / "straight", *args)
    assert straight.returncode == 0, straight.stderr[-2000:]

    proc = _train(tracking_uri, tmp_path / "killed", *args, wait=False)
    try:
        ckpt = tmp_path / "killed" / "checkpoints" / "epoch_0002.npz"
        deadline = time.monotonic() + 180
        while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(0.1)  # into epoch 3
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "killed" / "summary.json").exists(), "the run finished before it could be killed"
    run_id = json.loads((tmp_path / "killed" / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri)
    assert client.get_run(run_id).info.status == "RUNNING"

    resumed = _train(tracking_uri, tmp_path / "resume", f"resume={run_id}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "straight" / "summary.json").read_text())
    b = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert a["weights_sha256"] == b["weights_sha256"]
    assert a["metrics"]["test_accuracy"] == b["metrics"]["test_accuracy"]

    exp = client.get_experiment_by_name("tests").experiment_id
    assert len(client.search_runs([exp])) == 2  # the straight run and the one resumed run, no third
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.data.tags["resumed_from_epoch"] in ("2", "3")
    for name in ("train_loss", "val_accuracy", "lr", "epoch_seconds"):
        steps = [m.step for m in client.get_metric_history(run_id, name)]
        assert sorted(steps) == [1, 2, 3, 4, 5, 6], (name, steps)  # each epoch once
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]

    again = _train(tracking_uri, tmp_path / "again", f"resume={tmp_path / 'killed'}")
    assert again.returncode == 0 and "already finished" in again.stdout
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == sorted(steps)
