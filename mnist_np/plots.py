"""Figures for a finished run, one per PNG file.

matplotlib is imported inside :func:`save_all` (with the Agg backend) so
runs that never plot never pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """``(C, C)`` int counts: row = true class, column = predicted class."""
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def save_all(
    out_dir: Path,
    history: Sequence[dict[str, float]],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    x_test: np.ndarray,
    first_layer: np.ndarray,
    class_names: Sequence[str],
) -> list[Path]:
    """Write the run's figures into ``out_dir``; returns their paths.

    Args:
        history: per-epoch metric dicts (``train_loss``, ``val_loss``, ``train_accuracy``, ...).
        y_true, y_pred: ``(N,)`` test labels and predictions.
        x_test: ``(N, 784)`` test images in [0, 1].
        first_layer: ``W1: (784, H)``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    epochs = np.arange(1, len(history) + 1)

    for metric, label in (("loss", "cross-entropy loss"), ("accuracy", "accuracy")):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for split in ("train", "val"):
            values = [h[f"{split}_{metric}"] for h in history]
            if not np.all(np.isnan(values)):
                ax.plot(epochs, values, marker="o", label="train (running)" if split == "train" else "validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"{metric}_curves.png"))

    cm = confusion_matrix(y_true, y_pred, len(class_names))
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    threshold = cm.max() / 2
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color="white" if cm[i, j] > threshold else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"test confusion matrix (accuracy {np.mean(y_true == y_pred):.4f})")
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "confusion_matrix.png"))

    # The two image grids are drawn as one mosaic each (one axes, one
    # imshow) rather than one axes per tile: ~100 axes cost seconds.
    wrong = np.flatnonzero(y_true != y_pred)[:36]
    cols = 6
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, ax = plt.subplots(figsize=(7, 1.25 * rows + 0.6), dpi=100)
    ax.imshow(_mosaic(x_test[wrong].reshape(-1, 28, 28), cols, pad=10, fill=0.0), cmap="gray_r", vmin=0, vmax=1)
    for i, k in enumerate(wrong):
        r, c = divmod(i, cols)
        ax.text(c * 38 + 19, r * 38 + 9, f"true {class_names[y_true[k]]}, pred {class_names[y_pred[k]]}",
                ha="center", va="bottom", fontsize=6.5)
    ax.axis("off")
    ax.set_title(f"misclassified test images (first {len(wrong)} of {int(np.sum(y_true != y_pred))})", pad=12)
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "misclassified.png"))

    units = min(first_layer.shape[1], 64)
    w = first_layer[:, :units].T.reshape(units, 28, 28)
    # Each unit on its own symmetric scale, so weak and strong units both show structure.
    w = w / np.maximum(np.abs(w).reshape(units, -1).max(axis=1), 1e-12)[:, None, None]
    fig, ax = plt.subplots(figsize=(7, 7), dpi=100)
    ax.imshow(_mosaic(w, int(np.ceil(np.sqrt(units))), pad=2, fill=0.0), cmap="seismic", vmin=-1, vmax=1)
    ax.axis("off")
    ax.set_title(f"first-layer weights (first {units} of {first_layer.shape[1]} units; red +, blue -)")
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "first_layer_weights.png"))
    return paths


def _mosaic(tiles: np.ndarray, cols: int, pad: int, fill: float) -> np.ndarray:
    """``tiles: (N, h, w)`` -> one ``(rows*(h+pad), cols*(w+pad))`` image, row-major, ``pad`` px apart."""
    n, h, w = tiles.shape
    rows = max(1, int(np.ceil(n / cols)))
    out = np.full((rows * (h + pad), cols * (w + pad)), fill, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + pad) + pad : r * (h + pad) + pad + h, c * (w + pad) + pad // 2 : c * (w + pad) + pad // 2 + w] = tiles[i]
    return out


def _save(fig, path: Path) -> Path:  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    fig.savefig(path)
    plt.close(fig)
    return path


def sweep_plots(out_dir: Path, rows: Sequence[dict], keys: Sequence[str]) -> list[Path]:
    """One figure per swept key: validation accuracy of each finished member against its value.

    Numeric values get a numeric axis (logarithmic when they span more than
    two decades, as learning rates do); anything else is categorical.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "FINISHED" and r["val_accuracy"] is not None]
    paths = []
    for key in keys:
        values = [r.get(key) for r in done]
        accs = [r["val_accuracy"] for r in done]
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        numbers = _as_numbers(values)
        if numbers is not None and numbers:
            ax.scatter(numbers, accs)
            positive = [v for v in numbers if v > 0]
            if len(positive) == len(numbers) and max(positive) / min(positive) > 100:
                ax.set_xscale("log")
        else:
            labels = sorted({str(v) for v in values})
            ax.scatter([labels.index(str(v)) for v in values], accs)
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_xlabel(key)
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"validation accuracy vs {key} ({len(done)} finished members)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"val_accuracy_vs_{key.replace('/', '_')}.png"))
    return paths


def _as_numbers(values: Sequence[object]) -> list[float] | None:
    try:
        return [float(v) for v in values]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
