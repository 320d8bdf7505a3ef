"""Inference: MNIST-style preprocessing, scripts/predict.py and evaluate.py, the MLflow pyfunc model.

One small real training run (module-scoped) backs every test that needs a
network; its predictions are the reference everything else must reproduce.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image, ImageDraw

from conftest import PYTHON, small_overrides
from helpers.scripts import run_script
from mnist_np import data
from mnist_np.common.paths import PROJECT_ROOT
from mnist_np.experiment.config.compose import compose
from mnist_np.experiment.run.single import run
from mnist_np.inference import InferenceError, images_to_features, load_images, preprocess_image
from mnist_np.nn.activations import ReLU
from mnist_np.nn.model import MLP
from mnist_np.nn.weights import load_weights
from mnist_np.tracking.logged_model import log_pyfunc_model, resolve_weights

PREDICT = PROJECT_ROOT / "scripts" / "predict.py"
EVALUATE = PROJECT_ROOT / "scripts" / "evaluate.py"
MLFLOW_CLI = Path(sys.executable).parent / "mlflow"


# ----------------------------------------------------------------- helpers


def centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted (row, column) of ``img: (28, 28)`` in index coordinates."""
    idx = np.arange(img.shape[0])
    return float(img.sum(axis=1) @ idx / img.sum()), float(img.sum(axis=0) @ idx / img.sum())


def reference_logits(npz: Path, x: np.ndarray) -> np.ndarray:
    """The training code's own network on ``x: (N, 784)``: ``MLP.predict_logits``, ``(N, 10)``."""
    params, _ = load_weights(npz)
    model = MLP(params, ReLU())
    return model.predict_logits(x.astype(model.dtype))


def reference_labels(npz: Path, x: np.ndarray) -> np.ndarray:
    """What the training code's own network predicts: argmax of its logits, ``(N,)``."""
    return reference_logits(npz, x).argmax(axis=1)


def write_idx(path: Path, images: np.ndarray) -> Path:
    """uint8 ``(N, 28, 28)`` as a gzipped IDX file (the format MNIST ships in)."""
    header = struct.pack(">BBBBIII", 0, 0, 0x08, 3, *images.shape)
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(images, dtype=np.uint8).tobytes()))
    return path


def script(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a project script with this interpreter (stores are always named with --tracking-uri)."""
    return subprocess.run([PYTHON, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def mnist() -> data.RawDataset:
    return data.load_dataset("mnist")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One finished run: 3,000 images, 1 epoch, in its own SQLite store."""
    root = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    result = run(compose(small_overrides(uri, "trainer.epochs=1", "mlflow.log_plots=false")), output_dir=root / "out")
    return {"uri": uri, "run_id": result.run_id, "npz": root / "out" / "weights" / "final.npz", "root": root}


@pytest.fixture(scope="module")
def logged(trained: dict, mnist: data.RawDataset) -> dict:
    """The trained network logged by hand to a separate, already FINISHED run (the runner
    logged its own copy to the training run while it was RUNNING)."""
    client = MlflowClient(trained["uri"])
    exp = client.get_run(trained["run_id"]).info.experiment_id
    run_id = client.create_run(exp, run_name="model-only").info.run_id
    client.set_terminated(run_id, "FINISHED")
    before = client.get_run(run_id).info
    uri = log_pyfunc_model(run_id, trained["uri"], trained["npz"], images_to_features(mnist.test_images[:5]))
    return {**trained, "run_id": run_id, "model_uri": uri, "before": before}


def test_every_run_logs_its_model(trained: dict, mnist: data.RawDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    client = MlflowClient(trained["uri"])
    run = client.get_run(trained["run_id"])
    assert run.info.status == "FINISHED" and "warnings" not in run.data.tags
    (output,) = run.outputs.model_outputs  # exactly one model per run
    assert client.get_logged_model(output.model_id).name == "model"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    x = images_to_features(mnist.test_images[:50])
    out = mlflow.pyfunc.load_model(f"runs:/{trained['run_id']}/model").predict(x)
    assert out["label"].tolist() == reference_labels(trained["npz"], x).tolist()


# ----------------------------------------------------------------- preprocessing


def seven(size: tuple[int, int] = (200, 300)) -> Image.Image:
    """A thick white "7" on black, drawn off-centre so centring has work to do."""
    img = Image.new("L", size, 0)
    ImageDraw.Draw(img).line([(30, 40), (140, 40), (70, 270)], fill=255, width=24)
    return img


def test_preprocess_frames_a_drawing_the_mnist_way() -> None:
    white_on_black = seven()
    black_on_white = Image.eval(white_on_black, lambda v: 255 - v).convert("RGB")
    a, b = preprocess_image(white_on_black), preprocess_image(black_on_white)
    assert a.shape == (784,) and a.dtype == np.float32
    assert a.min() >= 0 and a.max() == pytest.approx(1.0)
    img = a.reshape(28, 28)
    cy, cx = centre_of_mass(img)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
    rows, cols = np.flatnonzero(img.any(axis=1)), np.flatnonzero(img.any(axis=0))
    assert 19 <= rows[-1] - rows[0] + 1 <= 21  # the longer side (height) is scaled to 20 px
    assert cols[-1] - cols[0] + 1 < rows[-1] - rows[0] + 1  # aspect ratio kept, not stretched to a square
    assert np.abs(a - b).max() < 0.02  # ink colour does not matter
    # Black strokes on a transparent canvas (as drawing apps save them) are not lost as black on black.
    transparent = Image.new("RGBA", white_on_black.size, (0, 0, 0, 0))
    transparent.putalpha(white_on_black)
    assert np.abs(preprocess_image(transparent) - a).max() < 0.02
    # A 16-bit scan (grey background at 20000, ink at 60000) is scaled by its range, not clipped to white.
    sixteen = Image.fromarray((20000 + np.asarray(white_on_black, dtype=np.uint16) // 255 * 40000).astype(np.uint16))
    assert sixteen.mode.startswith("I") and np.abs(preprocess_image(sixteen) - a).max() < 0.02


def test_preprocess_reproduces_mnist_digits(mnist: data.RawDataset) -> None:
    """MNIST digits are already framed this way: preprocessing one gives it back, nearly unchanged."""
    original = images_to_features(mnist.test_images[:200])
    again = np.stack([preprocess_image(Image.fromarray(im)) for im in mnist.test_images[:200]])
    assert np.abs(again - original).mean() < 0.01
    # Also from a large, inverted photo-like copy (dark ink on light, 5x the size).
    big = Image.fromarray(255 - mnist.test_images[0]).resize((140, 140), Image.Resampling.BICUBIC)
    assert np.abs(preprocess_image(big) - original[0]).mean() < 0.03


def test_preprocess_rejects_a_blank_image() -> None:
    with pytest.raises(InferenceError, match="blank"):
        preprocess_image(Image.new("RGB", (64, 48), (255, 255, 255)))


def test_load_images_decides_by_content_not_extension(tmp_path: Path, mnist: data.RawDataset) -> None:
    png_named_txt = tmp_path / "digit.txt"
    Image.fromarray(mnist.test_images[3]).save(png_named_txt, format="PNG")
    text_named_png = tmp_path / "notes.png"
    text_named_png.write_text("not an image\n")
    x, names = load_images([png_named_txt])
    assert x.shape == (1, 784) and names == [str(png_named_txt)]
    with pytest.raises(InferenceError, match=r"notes\.png: neither an image nor an IDX file"):
        load_images([text_named_png])


# ----------------------------------------------------------------- scripts/predict.py


def test_predict_script_labels_image_files(trained: dict, mnist: data.RawDataset, tmp_path: Path) -> None:
    files = []
    for i in range(10):
        im = Image.fromarray(mnist.test_images[i])
        if i % 2:  # every other one as a big black-on-white JPEG, the way a scan would come
            im = Image.eval(im, lambda v: 255 - v).resize((112, 112), Image.Resampling.BICUBIC).convert("RGB")
            path = tmp_path / f"digit{i}.jpg"
        else:
            path = tmp_path / f"digit{i}.png"
        im.save(path)
        files.append(path)
    proc = script(str(PREDICT), str(trained["npz"]), *map(str, files))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 10
    printed = [int(line.split("label ")[1].split()[0]) for line in lines]
    assert [line.split()[0] for line in lines] == [str(f) for f in files]

    x, _ = load_images(files)
    logits = reference_logits(trained["npz"], x).astype(np.float64)
    expected = logits.argmax(axis=1)
    assert printed == expected.tolist()
    assert np.mean(expected == mnist.test_labels[:10]) >= 0.7  # a 1-epoch network, mostly right
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    top = (e / e.sum(axis=1, keepdims=True)).max(axis=1)
    assert [float(line.split("p=")[1]) for line in lines] == pytest.approx(top, abs=1.5e-4)


def test_predict_script_reads_idx_files_and_run_ids(trained: dict, mnist: data.RawDataset, tmp_path: Path) -> None:
    idx = write_idx(tmp_path / "five-idx3-ubyte.gz", mnist.test_images[:5])
    proc = run_script("predict", trained["run_id"], str(idx), "--tracking-uri", trained["uri"])  # main() here
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [f"{idx}[{i}]" for i in range(5)]
    printed = [int(line.split("label ")[1].split()[0]) for line in lines]
    assert printed == reference_labels(trained["npz"], images_to_features(mnist.test_images[:5])).tolist()


@pytest.mark.fault("security", "not an image")
def test_predict_script_errors_are_one_line_with_status_2(trained: dict, tmp_path: Path) -> None:
    text = tmp_path / "readme.txt"
    text.write_text("seven\n")
    proc = run_script("predict", str(trained["npz"]), str(text))  # main() here: refused before MLflow's import
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {text}: neither an image nor an IDX file") and proc.stderr.count("\n") == 1

    png = tmp_path / "ok.png"
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(png)
    proc = script(str(PREDICT), "0123456789abcdef0123456789abcdef", str(png), "--tracking-uri", trained["uri"])
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: no run '0123456789abcdef0123456789abcdef'") and proc.stderr.count("\n") == 1


def test_resolve_weights(trained: dict, tmp_path: Path) -> None:
    assert resolve_weights(str(trained["npz"]), None) == trained["npz"]
    best = resolve_weights(trained["run_id"], trained["uri"], "best", dst_dir=tmp_path)
    assert best.name == "best.npz" and best.is_file()
    with pytest.raises(ValueError, match="no such file"):
        resolve_weights(str(tmp_path / "missing.npz"), trained["uri"])
    with pytest.raises(ValueError, match="no MLflow store"):
        resolve_weights(trained["run_id"], f"sqlite:///{tmp_path / 'nowhere.db'}")
    assert not (tmp_path / "nowhere.db").exists()  # a wrong URI must not create a store


# ----------------------------------------------------------------- the pyfunc model


def test_pyfunc_model_predicts_like_the_training_code(logged: dict, mnist: data.RawDataset,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    client = MlflowClient(logged["uri"])
    after = client.get_run(logged["run_id"])
    # Logging the model must not reopen or re-close the run.
    assert after.info.status == logged["before"].status == "FINISHED"
    assert after.info.end_time == logged["before"].end_time
    assert logged["model_uri"] == f"runs:/{logged['run_id']}/model"
    (output,) = after.outputs.model_outputs
    model_info = client.get_logged_model(output.model_id)
    assert model_info.name == "model" and model_info.source_run_id == logged["run_id"]
    assert str(model_info.status) in ("READY", "LoggedModelStatus.READY")

    x = images_to_features(mnist.test_images[:100])
    # runs:/ URIs resolve against the tracking URI of the environment; without
    # this, MLflow would open (and create) a default store in the current dir.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged["uri"])
    assert mlflow.get_tracking_uri() == logged["uri"]
    model = mlflow.pyfunc.load_model(logged["model_uri"])
    (spec,) = model.metadata.get_input_schema().inputs
    assert spec.type == np.dtype("float32") and spec.shape == (-1, 784)
    out = model.predict(x)
    assert list(out.columns) == ["label", "probability"] + [f"p{i}" for i in range(10)]
    assert out["label"].tolist() == reference_labels(logged["npz"], x).tolist()
    probs = out[[f"p{i}" for i in range(10)]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(out["probability"], probs.max(axis=1))
    # A DataFrame with one column per pixel is accepted too.
    # (BLAS may block 7 rows differently from 100, so probabilities match to rounding, not bits.)
    pd.testing.assert_frame_equal(model.predict(pd.DataFrame(x[:7])), out.iloc[:7], rtol=1e-5)

    # The served model carries its own forward pass: it must not need this repository.
    # (The environment's tracking URI is what finds a logged model behind runs:/ here: MLflow
    # 3.17 looks it up with the global URI even when tracking_uri= is passed.)
    local = mlflow.artifacts.download_artifacts(logged["model_uri"], dst_path=str(logged["root"] / "dl"))
    code_files = list(Path(local).rglob("*.py"))
    assert code_files and not any(re.search(r"^\s*(from|import)\s+mnist_np", f.read_text(), re.M) for f in code_files)


@pytest.mark.slow
def test_mlflow_models_predict_cli_serves_the_model(logged: dict, mnist: data.RawDataset, tmp_path: Path) -> None:
    x = images_to_features(mnist.test_images[:20])
    request = tmp_path / "input.json"
    request.write_text(json.dumps({"inputs": x.tolist()}))
    answer = tmp_path / "output.json"
    # A mnist_np that cannot be imported shadows the installed one: serving must not need it.
    poison = tmp_path / "poison" / "mnist_np"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('the served model imported mnist_np')\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged["uri"], "PYTHONPATH": str(poison.parent)}
    proc = subprocess.run(
        [str(MLFLOW_CLI), "models", "predict", "-m", logged["model_uri"], "-i", str(request), "-t", "json",
         "-o", str(answer), "--env-manager", "local"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(answer.read_text())["predictions"]
    assert [r["label"] for r in rows] == reference_labels(logged["npz"], x).tolist()


def test_logging_the_model_leaves_a_running_run_running(trained: dict, mnist: data.RawDataset) -> None:
    """The runner logs the model before it closes its run: the run must stay RUNNING for it to close."""
    client = MlflowClient(trained["uri"])
    exp = client.get_run(trained["run_id"]).info.experiment_id
    running = client.create_run(exp).info.run_id
    log_pyfunc_model(running, trained["uri"], trained["npz"], images_to_features(mnist.test_images[:2]))
    info = client.get_run(running).info
    assert info.status == "RUNNING" and info.end_time is None
    assert [o.model_id for o in client.get_run(running).outputs.model_outputs]


# ----------------------------------------------------------------- scripts/evaluate.py


def test_evaluate_script_matches_the_logged_test_accuracy(trained: dict) -> None:
    proc = script(str(EVALUATE), trained["run_id"], "--tracking-uri", trained["uri"])
    assert proc.returncode == 0, proc.stderr
    logged = MlflowClient(trained["uri"]).get_run(trained["run_id"]).data.metrics["test_accuracy"]
    lines = proc.stdout.splitlines()
    (acc_line,) = [line for line in lines if line.startswith("accuracy ")]
    assert acc_line.split()[1] == f"{logged:.4f}"
    (header,) = [i for i, line in enumerate(lines) if line.startswith("true\\pred")]
    assert lines[header].split()[1:] == [str(j) for j in range(10)]
    matrix = np.array([[int(v) for v in line.split()[1:]] for line in lines[header + 1 : header + 11]])
    assert matrix.shape == (10, 10) and matrix.sum() == 10_000
    assert np.trace(matrix) / 10_000 == pytest.approx(logged, abs=1e-9)
    per_class = lines[lines.index("per-class accuracy:") + 1 : lines.index("per-class accuracy:") + 11]
    assert [line.split()[0] for line in per_class] == [str(i) for i in range(10)]
