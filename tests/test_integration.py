"""End to end on real MNIST (a small subset): config -> training -> a complete MLflow run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, TRAIN_SCRIPT, small_overrides
from mnist_np import data
from mnist_np.experiment.config.compose import compose
from mnist_np.experiment.run.single import run
from mnist_np.train.loop import TrainingDiverged

PER_EPOCH = ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds", "samples_per_second"]
PLOTS = ["accuracy_curves.png", "confusion_matrix.png", "first_layer_weights.png", "loss_curves.png",
         "misclassified.png"]


def only_run(tracking_uri: str, experiment: str = "tests"):
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def independent_accuracy(npz: Path) -> float:
    """Test accuracy of a weights file by a forward pass written here from scratch."""
    with np.load(npz, allow_pickle=False) as f:
        layers = [(f[f"W{i}"], f[f"b{i}"]) for i in range(1, (len(f.files) - 1) // 2 + 1)]
    raw = data.load_dataset("mnist")
    x = raw.test_images.reshape(-1, 784).astype(layers[0][0].dtype) / 255
    for i, (w, b) in enumerate(layers):
        x = x @ w + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    return float(np.mean(x.argmax(axis=1) == raw.test_labels))


def test_run_logs_the_whole_layout(tracking_uri: str, tmp_path: Path) -> None:
    cfg = compose(small_overrides(tracking_uri))
    result = run(cfg, output_dir=tmp_path / "out", overrides=["trainer.epochs=2"])
    client, r = only_run(tracking_uri)
    assert r.info.status == "FINISHED" and r.info.run_id == result.run_id
    assert r.info.run_name == "mlp128-sgd-lr0.1-bs128"

    p = r.data.params
    assert p["model.hidden_size"] == "128" and p["optimizer.lr"] == "0.1"
    assert p["trainer.batch_size"] == "128" and p["trainer.epochs"] == "2" and p["seed"] == "0"

    for name in PER_EPOCH:
        history = client.get_metric_history(r.info.run_id, name)
        assert sorted(m.step for m in history) == [1, 2], name
    m = r.data.metrics
    assert 0.8 < m["test_accuracy"] <= 1 and m["test_loss"] > 0
    assert m["best_val_accuracy"] > 0.8 and m["best_epoch"] in (1, 2)

    t = r.data.tags
    assert t["overrides"] == "trainer.epochs=2"
    assert t["hydra_output_dir"] == str(tmp_path / "out")
    assert t["numpy_version"] == np.__version__ and len(t["weights_sha256"]) == 64
    assert "mlflow.source.git.commit" in t

    artifacts = {a.path for top in ("config", "weights", "plots") for a in client.list_artifacts(r.info.run_id, top)}
    assert {"config/config.yaml", "config/overrides.yaml", "weights/final.npz", "weights/best.npz"} <= artifacts
    assert {f"plots/{name}" for name in PLOTS} <= artifacts
    assert {"metrics.jsonl", "summary.json"} <= {a.path for a in client.list_artifacts(r.info.run_id)}

    (dataset_input,) = r.inputs.dataset_inputs
    assert dataset_input.dataset.name == "mnist"
    assert json.loads(dataset_input.dataset.profile) == {"train": 3000, "val": 1000, "test": 10000}

    # Nothing lost: the same files are in the output dir.
    out = tmp_path / "out"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert all((out / "plots" / name).stat().st_size > 5000 for name in PLOTS)

    # The logged weights, evaluated by an independent forward pass, give the logged test accuracy.
    local = Path(client.download_artifacts(r.info.run_id, "weights/final.npz", str(tmp_path / "dl")))
    assert independent_accuracy(local) == pytest.approx(m["test_accuracy"], abs=1e-4)


def test_same_config_gives_bit_identical_weights(tracking_uri: str, tmp_path: Path) -> None:
    cfg = compose(small_overrides(tracking_uri, "trainer.epochs=1", "mlflow.log_plots=false", "model.dropout=0.2"))
    a = run(cfg, output_dir=tmp_path / "a")
    b = run(cfg, output_dir=tmp_path / "b")
    c = run(compose(small_overrides(tracking_uri, "trainer.epochs=1", "mlflow.log_plots=false", "model.dropout=0.2",
                                    "seed=1")),
            output_dir=tmp_path / "c")
    client = MlflowClient(tracking_uri)
    sha = [client.get_run(x.run_id).data.tags["weights_sha256"] for x in (a, b, c)]
    assert sha[0] == sha[1] != sha[2]
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]


@pytest.mark.fault("training faults", "FAILED")
def test_diverging_run_ends_failed_with_its_reason(tracking_uri: str, tmp_path: Path) -> None:
    cfg = compose(small_overrides(tracking_uri, "optimizer.lr=1e6", "mlflow.log_plots=false"))
    with pytest.raises(TrainingDiverged):
        run(cfg, output_dir=tmp_path / "out")
    _, r = only_run(tracking_uri)
    assert r.info.status == "FAILED"
    reason = r.data.tags["failure_reason"]
    assert "TrainingDiverged" in reason and "epoch 1" in reason and "batch" in reason


@pytest.mark.fault("training faults", "KILLED")
def test_ctrl_c_ends_the_run_killed(tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("mnist_np.experiment.run.execute.fit", interrupted)
    with pytest.raises(KeyboardInterrupt) as e:
        run(compose(small_overrides(tracking_uri)), output_dir=tmp_path / "out")
    _, r = only_run(tracking_uri)
    assert r.info.status == "KILLED" and "KeyboardInterrupt" in r.data.tags["failure_reason"]
    # Interrupted before the first checkpoint: resuming starts it over, in the same run.
    assert "no checkpoint yet, so resuming starts it over in the same run" in str(e.value)
    assert (str(e.value).endswith(f"resume={r.info.run_id}")
            and str(e.value).endswith(r.data.tags["failure_reason"].split("; ", 1)[1]))
    monkeypatch.undo()
    result = run(compose(small_overrides(tracking_uri, f"resume={r.info.run_id}", "mlflow.log_plots=false")))
    _, done = only_run(tracking_uri)
    assert result.run_id == r.info.run_id and done.info.status == "FINISHED"


@pytest.mark.slow
def test_cli_core_overrides_reach_params_and_weight_shapes(tracking_uri: str, tmp_path: Path) -> None:
    """The README's quickstart command, as written, plus a private store and run dir."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [PYTHON, str(TRAIN_SCRIPT), "model.hidden_size=256", "optimizer.lr=0.05", "trainer.batch_size=64",
         "trainer.epochs=5", f"mlflow.tracking_uri={tracking_uri}", "mlflow.experiment_name=tests",
         "mlflow.log_plots=false", f"hydra.run.dir={out}"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    client, r = only_run(tracking_uri)
    assert r.info.status == "FINISHED" and r.info.run_name == "mlp256-sgd-lr0.05-bs64"
    p = r.data.params
    assert ((p["model.hidden_size"], p["optimizer.lr"], p["trainer.batch_size"], p["trainer.epochs"])
            == ("256", "0.05", "64", "5"))
    assert len(client.get_metric_history(r.info.run_id, "val_accuracy")) == 5
    with np.load(out / "weights" / "final.npz", allow_pickle=False) as f:
        assert f["W1"].shape == (784, 256) and f["W2"].shape == (256, 10) and f["W1"].dtype == np.float32
    assert r.data.metrics["test_accuracy"] > 0.97
    assert (out / ".hydra" / "config.yaml").exists() and (out / "train.log").exists()
    assert "hydra.yaml" in {Path(a.path).name for a in client.list_artifacts(r.info.run_id, "config")}


def test_seed_baseline_preset_trains_in_float64(tracking_uri: str, tmp_path: Path) -> None:
    cfg = compose(small_overrides(tracking_uri, "+experiment=seed_baseline", "trainer.epochs=1",
                                  "mlflow.log_plots=false"))
    result = run(cfg, output_dir=tmp_path / "out")
    with np.load(result.output_dir / "weights" / "final.npz", allow_pickle=False) as f:
        assert f["W1"].dtype == np.float64
    _, r = only_run(tracking_uri)
    assert r.info.run_name == "seed-baseline" and r.data.params["trainer.dtype"] == "float64"


@pytest.mark.slow
@pytest.mark.fault("training faults", "reaped")
def test_a_run_killed_with_sigkill_is_closed_by_the_next_run(tracking_uri: str, tmp_path: Path) -> None:
    import os
    import signal
    import time

    proc = subprocess.Popen(
        [PYTHON, str(TRAIN_SCRIPT), f"mlflow.tracking_uri={tracking_uri}", "mlflow.experiment_name=tests",
         "trainer.epochs=50", "mlflow.log_plots=false", "trainer.progress=false",
         f"hydra.run.dir={tmp_path / 'killed'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        metrics = tmp_path / "killed" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
            time.sleep(0.3)
        assert metrics.exists() and metrics.stat().st_size > 0, "training never got to its first epoch"
        os.kill(proc.pid, signal.SIGKILL)  # mid-training, after at least one epoch was logged
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    client, killed = only_run(tracking_uri)
    assert killed.info.status == "RUNNING"  # nobody could close it

    run(compose(small_overrides(tracking_uri, "trainer.epochs=1", "mlflow.log_plots=false")),
        output_dir=tmp_path / "next")
    after = client.get_run(killed.info.run_id)
    assert after.info.status == "FAILED" and "killed from outside" in after.data.tags["failure_reason"]


@pytest.mark.fault("training faults", "warning")
def test_a_failing_plot_never_fails_a_finished_training(tracking_uri: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no font today")

    monkeypatch.setattr("mnist_np.plots._confusion", broken)
    run(compose(small_overrides(tracking_uri, "trainer.epochs=1")), output_dir=tmp_path / "out")
    client, r = only_run(tracking_uri)
    assert r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics
    assert "plots: RuntimeError: no font today" in r.data.tags["warnings"]
    assert (tmp_path / "out" / "weights" / "final.npz").exists()
