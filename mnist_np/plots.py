"""Figures for a finished run, one per PNG file, and for a sweep.

matplotlib is imported only when figures are drawn (with the Agg backend),
so runs that never plot never pay for it; a run draws its figures in
forked processes while it logs everything else (:func:`save_all_in_background`,
the speedup ``figures_in_background`` of :mod:`mnist_np.speedups`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mnist_np import speedups
from mnist_np.common.files import atomic_write
from mnist_np.nn.metrics import confusion_matrix

# matplotlib says at INFO that it built its font cache ("generated new fontManager", on a first run): not news
# to a user reading a run's console; its warnings still show.
logging.getLogger("matplotlib").setLevel(logging.WARNING)


def save_all(out_dir: Path, *args: Any) -> list[Path]:
    """Draw every figure of :func:`figures` (same arguments) into ``out_dir``; returns their paths."""
    return [draw() for draw in figures(out_dir, *args)]


def figures(
    out_dir: Path,
    history: Sequence[dict[str, float]],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    x_test: np.ndarray,
    first_layer: np.ndarray,
    class_names: Sequence[str],
) -> list[Callable[[], Path]]:
    """The run's figures, each a function that draws it and saves it in ``out_dir`` as a PNG.

    ``loss_curves.png`` and ``accuracy_curves.png`` (train and validation per
    epoch), ``confusion_matrix.png`` (test counts), ``misclassified.png``
    (test images with true and predicted class) and
    ``first_layer_weights.png`` (each hidden unit's 784 input weights as a
    28x28 image). Sized to stay readable when shown ~700 px wide.

    Args:
        history: per-epoch metric dicts (``train_loss``, ``val_loss``, ``train_accuracy``, ...).
        y_true, y_pred: ``(N,)`` test labels and predictions.
        x_test: ``(N, 784)`` test images in [0, 1].
        first_layer: ``W1: (784, H)``.
        class_names: display name per label (digits, or Fashion-MNIST's garments).
    """
    import matplotlib

    matplotlib.use("Agg")
    # pyplot's import (a third of a second) is done here, once per process:
    # the forked children of save_all_in_background then find it imported.
    import matplotlib.pyplot  # noqa: F401

    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        lambda: _curves(out_dir / "loss_curves.png", history, "loss", "cross-entropy loss (nats per image)"),
        lambda: _curves(out_dir / "accuracy_curves.png", history, "accuracy", "accuracy (%)"),
        lambda: _confusion(out_dir / "confusion_matrix.png", y_true, y_pred, class_names),
        lambda: _misclassified(out_dir / "misclassified.png", y_true, y_pred, x_test, class_names),
        lambda: _first_layer(out_dir / "first_layer_weights.png", first_layer),
    ]


def save_all_in_background(out_dir: Path, *args: Any, processes: int = 2) -> Callable[[], str | None]:
    """Start :func:`save_all` (same arguments) in ``processes`` forked children; returns ``wait``.

    Drawing is about a second of matplotlib, nearly all of it Python; each
    child draws every ``processes``-th figure on another core while the
    caller logs the model and uploads artifacts. ``wait()`` returns None when
    the figures are written, else the errors in one line. Where forking is
    not safe (not Linux), or the speedup is off, the figures are drawn
    before this returns.
    """
    try:
        drawings = figures(out_dir, *args)  # the backend is chosen and pyplot imported once, before the forks
    except Exception as e:  # noqa: BLE001 -- reported like the children's errors
        error = f"{type(e).__name__}: {e}"
        return lambda: error
    return speedups.in_children([drawings[i::processes] for i in range(min(processes, len(drawings)))])


def _curves(path: Path, history: Sequence[dict[str, float]], metric: str, ylabel: str) -> Path:
    """Train and validation ``metric`` per epoch; the legend gives each curve's last value."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    scale = 100.0 if metric == "accuracy" else 1.0
    epochs = np.arange(1, len(history) + 1)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    # The train figure is a running average over the epoch's batches (the
    # network changes while it is measured), hence above validation early on.
    for split, label in (("train", "train (running average)"), ("val", "validation")):
        values = np.array([h[f"{split}_{metric}"] for h in history], dtype=float) * scale
        if np.all(np.isnan(values)):
            continue
        last = values[~np.isnan(values)][-1]
        ax.plot(epochs, values, marker="o" if len(epochs) <= 30 else None, markersize=4,
                label=f"{label}: {last:.2f}" if metric == "accuracy" else f"{label}: {last:.4f}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{metric} per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _confusion(path: Path, y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> Path:
    """Counts with class names; colour on a log scale so that a handful of errors still shows."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    cm = confusion_matrix(y_true, y_pred, len(class_names))
    fig, ax = plt.subplots(figsize=(6.4, 6), dpi=100)
    cmap = plt.get_cmap("Blues").with_extremes(bad="white")  # zero counts: masked by the log scale, drawn blank
    norm = LogNorm(vmin=1, vmax=max(int(cm.max()), 2))
    ax.imshow(np.ma.masked_equal(cm, 0), cmap=cmap, norm=norm)
    ticks = np.arange(len(class_names))
    long_names = max(len(n) for n in class_names) > 2
    ax.set_xticks(ticks, class_names, rotation=40 if long_names else 0, ha="right" if long_names else "center")
    ax.set_yticks(ticks, class_names)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            dark = cm[i, j] > 0 and norm(cm[i, j]) > 0.6
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    correct, total = int(np.trace(cm)), int(cm.sum())
    ax.set_title(f"test set: {correct:,} of {total:,} correct ({100 * correct / max(total, 1):.2f}%)")
    fig.tight_layout()
    return _save(fig, path)


def _misclassified(path: Path, y_true: np.ndarray, y_pred: np.ndarray, x_test: np.ndarray,
                   class_names: Sequence[str], cols: int = 6, limit: int = 36) -> Path:
    """The first ``limit`` misclassified test images, each under its true and predicted class."""
    import matplotlib.pyplot as plt

    wrong = np.flatnonzero(y_true != y_pred)[:limit]
    pad = 16  # image pixels above each tile for its two-line label
    # One mosaic (one axes, one imshow) rather than an axes per tile: ~100 axes cost seconds.
    mosaic = _mosaic(x_test[wrong].reshape(-1, 28, 28), cols, pad=pad, fill=0.0)
    width = 7.0  # inches; the height follows the mosaic's shape, plus room for the title
    fig, ax = plt.subplots(figsize=(width, width * mosaic.shape[0] / mosaic.shape[1] + 0.5), dpi=100)
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1)
    for i, k in enumerate(wrong):
        r, c = divmod(i, cols)
        ax.text(c * (28 + pad) + (28 + pad) / 2, r * (28 + pad) + pad - 1,
                f"true {class_names[y_true[k]]}\npred {class_names[y_pred[k]]}",
                ha="center", va="bottom", fontsize=8, linespacing=1.1)
    ax.axis("off")
    total = int(np.sum(y_true != y_pred))
    ax.set_title(f"misclassified test images (first {len(wrong)} of {total:,})", pad=4)
    fig.tight_layout()
    return _save(fig, path)


def _first_layer(path: Path, first_layer: np.ndarray, limit: int = 64) -> Path:
    """The first ``limit`` hidden units' input weights, each as a 28x28 image."""
    import matplotlib.pyplot as plt

    units = min(first_layer.shape[1], limit)
    w = first_layer[:, :units].T.reshape(units, 28, 28)
    # Each unit on its own symmetric scale, so weak and strong units both show structure.
    w = w / np.maximum(np.abs(w).reshape(units, -1).max(axis=1), 1e-12)[:, None, None]
    fig, ax = plt.subplots(figsize=(6, 6.3), dpi=100)
    # Nearest-neighbour: each weight a crisp square (and a PNG a fraction of the size).
    ax.imshow(_mosaic(w, int(np.ceil(np.sqrt(units))), pad=2, fill=0.0), cmap="seismic", vmin=-1, vmax=1,
              interpolation="nearest")
    ax.axis("off")
    ax.set_title(f"first-layer weights, one 28x28 image per hidden unit\n"
                 f"(first {units} of {first_layer.shape[1]} units; red positive, blue negative)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _mosaic(tiles: np.ndarray, cols: int, pad: int, fill: float) -> np.ndarray:
    """``tiles: (N, h, w)`` -> one ``(rows*(h+pad), cols*(w+pad))`` image, row-major.

    Each tile sits at the bottom of its cell, centred across: ``pad`` rows
    above it (room for a label) and ``pad // 2`` columns either side.
    """
    n, h, w = tiles.shape
    rows = max(1, int(np.ceil(n / cols)))
    out = np.full((rows * (h + pad), cols * (w + pad)), fill, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + pad) + pad : r * (h + pad) + pad + h,
            c * (w + pad) + pad // 2 : c * (w + pad) + pad // 2 + w] = tiles[i]
    return out


def _save(fig, path: Path) -> Path:  # type: ignore[no-untyped-def]
    import matplotlib.pyplot as plt

    # Atomic like every file a later command reads (scripts/sync.py uploads what a run left).
    atomic_write(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or "png"))
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
            ax.set_xticks(range(len(labels)), [_short(label) for label in labels], rotation=30, ha="right")
        ax.set_xlabel(key)
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"validation accuracy vs {key} ({len(done)} finished members)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"val_accuracy_vs_{key.replace('/', '_')}.png"))
    return paths


def _short(label: str, most: int = 32) -> str:
    """A tick label that fits under the axis (a swept URI or path would not: its middle goes)."""
    return label if len(label) <= most else f"{label[: most // 2 - 1]}…{label[-(most // 2 - 1):]}"


def _as_numbers(values: Sequence[object]) -> list[float] | None:
    try:
        return [float(v) for v in values]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def pareto_plot(path: Path, points: Sequence[dict], front: Sequence[dict], keys: Sequence[str]) -> Path:
    """A two-objective search: every finished member, and the Pareto front joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = keys[0], keys[1]
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    ax.scatter([p[x] for p in points], [p[y] for p in points], color="0.6", label=f"members ({len(points)})")
    ordered = sorted(front, key=lambda p: p[x])
    ax.plot([p[x] for p in ordered], [p[y] for p in ordered], marker="o", color="C3",
            label=f"Pareto front ({len(front)})")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title("search objectives: each finished member, and the front")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def importance_plot(path: Path, rows: Sequence[dict], members: int, evaluator: str = "PED-ANOVA") -> Path:
    """A sweep's parameter importance (rows ``param, importance``, most important first) as horizontal bars, the first
    on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [_short(str(r["param"])) for r in rows][::-1]
    values = [float(r["importance"]) for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.45 * len(rows)), dpi=100)
    bars = ax.barh(names, values, color="C0")
    ax.bar_label(bars, [f"{v:.2f}" for v in values], padding=3)
    ax.set_xlim(0, max(1.0, max(values) * 1.15))
    ax.set_xlabel("importance to validation accuracy (sums to 1)")
    ax.set_title(f"what mattered: {evaluator} over {members} finished members", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
