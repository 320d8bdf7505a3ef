"""The run's figures: one PNG per figure, readable at README size, for digits and garment names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_np.data import DATASETS
from mnist_np.plots import confusion_matrix, save_all, save_all_in_background

FILES = ["loss_curves.png", "accuracy_curves.png", "confusion_matrix.png", "misclassified.png",
         "first_layer_weights.png"]


def fake_run(seed: int, n: int = 400,
             errors: int = 40) -> tuple[list[dict[str, float]], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    history = [{"train_loss": 1.0 / e, "val_loss": 1.1 / e, "train_accuracy": 1 - 0.1 / e, "val_accuracy": 1 - 0.12 / e}
               for e in range(1, 8)]
    y_true = rng.integers(0, 10, n)
    y_pred = y_true.copy()
    y_pred[:errors] = (y_true[:errors] + 1) % 10
    # Digit-like images: blank but for a bar of ink (random noise would not compress like real digits).
    x = np.zeros((n, 28, 28), dtype=np.float32)
    for i, (r, c) in enumerate(rng.integers(4, 18, (n, 2))):
        x[i, r : r + 8, c : c + 4] = 1.0
    x = x.reshape(n, 784)
    w1 = rng.standard_normal((784, 100)).astype(np.float32)
    return history, y_true, y_pred, x, w1


def test_confusion_matrix_counts_rows_true_columns_predicted() -> None:
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_every_figure_is_its_own_readable_png(tmp_path: Path, dataset: str) -> None:
    history, y_true, y_pred, x, w1 = fake_run(0)
    paths = save_all(tmp_path, history, y_true, y_pred, x, w1, DATASETS[dataset].class_names)
    assert [p.name for p in paths] == FILES
    for path in paths:
        with Image.open(path) as img:
            assert img.format == "PNG"
            # Wide enough to read, narrow enough to show as is in a README (no downscaling blur).
            assert 500 <= img.width <= 720 and 350 <= img.height <= 800, (path.name, img.size)
        assert path.stat().st_size < 300_000, path.name  # every run logs these; keep the store small


def test_a_run_without_mistakes_still_gets_every_figure(tmp_path: Path) -> None:
    history, y_true, _, x, w1 = fake_run(1)
    history[0]["train_loss"] = float("nan")  # an epoch without a figure must not break the curve
    paths = save_all(tmp_path, history, y_true, y_true, x, w1[:, :3], DATASETS["mnist"].class_names)
    assert all(p.exists() and p.stat().st_size > 2000 for p in paths)


@pytest.mark.parametrize("forks", [True, False])
def test_figures_drawn_in_the_background_match_the_plain_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              forks: bool) -> None:
    """In forked children (Linux) or in-process (elsewhere): the same files, and errors come back as one line."""
    monkeypatch.setattr("mnist_np.speedups.forks_safely", lambda: forks)
    history, y_true, y_pred, x, w1 = fake_run(2)
    args = (history, y_true, y_pred, x, w1, DATASETS["mnist"].class_names)
    assert save_all_in_background(tmp_path / "bg", *args)() is None
    assert sorted(p.name for p in (tmp_path / "bg").iterdir()) == sorted(FILES)

    def broken(*a, **k):
        raise RuntimeError("no font today")

    monkeypatch.setattr("mnist_np.plots._first_layer", broken)
    assert save_all_in_background(tmp_path / "broken", *args)() == "RuntimeError: no font today"
