"""Inference on new images: image/IDX loading, prediction, evaluation, the text report.

Part of the numeric core: NumPy, Pillow and PyYAML (to read the config text
embedded in weights files) only -- no Hydra, no MLflow -- so it works on a
weights file with nothing else around it. How one image is framed like an
MNIST digit lives in :mod:`mnist_np.preprocess`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from mnist_np import data
from mnist_np.nn.activations import Activation
from mnist_np.nn.losses import softmax
from mnist_np.nn.metrics import confusion_matrix
from mnist_np.nn.model import MLP
from mnist_np.nn.registry import ACTIVATIONS, lookup
from mnist_np.preprocess import SIDE, InferenceError, preprocess_image

__all__ = [
    "InferenceError",
    "EvalResult",
    "activation_from_config",
    "evaluate",
    "format_report",
    "images_to_features",
    "load_images",
    "load_test_set",
    "parse_config",
    "predict_logits",
    "predict_proba",
    "preprocess_image",
]

ACCEPTED = "accepted: images Pillow can open (PNG, JPEG, ...) and IDX image files (N, 28, 28), raw or .gz"


def images_to_features(images: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` -> ``(N, 784)`` in [0, 1] as ``dtype``.

    Training's own features (:func:`mnist_np.data.to_features`), so scores
    computed here match the ones logged by a run.
    """
    return data.to_features(images, None, dtype)


# ----------------------------------------------------------------- loading


def _open_image(path: Path) -> Image.Image | None:
    """The decoded image at ``path``, or ``None`` when Pillow does not recognise the format.

    The format is decided by Pillow reading the file's header, never by its
    extension; ``verify()`` then checks the file's structure (PNG CRCs, ...)
    and a full ``load()`` decodes it, so a truncated image is an error here
    and not a crash later.
    """
    try:
        with Image.open(path) as probe:
            probe.verify()
    except UnidentifiedImageError:
        return None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InferenceError(f"{path}: a damaged or unsupported image ({e})") from e
    try:
        # verify() leaves the image unusable: open it again to decode.
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InferenceError(f"{path}: a damaged or unsupported image ({e})") from e


def _read_idx_images(path: Path) -> np.ndarray:
    """IDX images ``(N, 28, 28)`` uint8 from ``path`` (raw or .gz).

    Raises:
        InferenceError: not IDX, or IDX of another shape (e.g. a labels file).
    """
    try:
        arr = data.read_idx(path)
    except data.DataError as e:
        reason = str(e).removeprefix(f"{path}: ")
        if "not an IDX file" in reason or "too short" in reason:
            raise InferenceError(f"{path}: neither an image nor an IDX file ({ACCEPTED})") from e
        # IDX by its header but unreadable: say why rather than "not IDX".
        raise InferenceError(f"{path}: a damaged IDX file ({reason})") from e
    if arr.ndim != 3 or arr.shape[1:] != (SIDE, SIDE):
        raise InferenceError(f"{path}: an IDX file of shape {arr.shape}, expected images (N, {SIDE}, {SIDE})")
    return arr


def load_images(paths: Sequence[str | os.PathLike[str]]) -> tuple[np.ndarray, list[str]]:
    """Read digits from image files and IDX files, in order.

    Args:
        paths: image files (anything Pillow opens) and/or IDX image files.

    Returns:
        ``(x, names)``: ``x: (N, 784)`` float32 in [0, 1], one row per image
        (an IDX file of ``n`` images gives ``n`` rows); ``names``: ``N``
        labels for the rows, the path as given, ``path[i]`` for IDX rows.

    Raises:
        InferenceError: a missing or unreadable file, a file that is neither,
        or a blank image -- the message names the file.
    """
    rows: list[np.ndarray] = []
    names: list[str] = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise InferenceError(f"{p}: no such file")
        img = _open_image(path)
        if img is not None:
            try:
                rows.append(preprocess_image(img)[None, :])
            except InferenceError as e:
                raise InferenceError(f"{p}: {e}") from e
            names.append(str(p))
            continue
        images = _read_idx_images(path)
        rows.append(images_to_features(images, np.float32))
        names.extend(f"{p}[{i}]" for i in range(len(images)))
    x = np.concatenate(rows) if rows else np.zeros((0, SIDE * SIDE), dtype=np.float32)
    return x, names


# ----------------------------------------------------------------- prediction


def parse_config(config_yaml: str) -> dict[str, Any]:
    """The config embedded in a weights file, as a dict (``{}`` when absent or unreadable).

    ``yaml.safe_load`` builds plain dicts, lists and scalars only, so a
    weights file cannot make us construct arbitrary objects.
    """
    if not config_yaml.strip():
        return {}
    try:
        cfg = yaml.safe_load(config_yaml)
    except yaml.YAMLError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def activation_from_config(config: Mapping[str, Any]) -> Activation:
    """The hidden-layer nonlinearity named by ``model.activation`` (default ``relu``).

    Raises:
        InferenceError: an activation this version does not know.
    """
    model = config.get("model") or {}
    name = model.get("activation") or "relu"
    slope = model.get("negative_slope", 0.01)
    try:
        factory = lookup(ACTIVATIONS, str(name), "model.activation")
    except KeyError as e:
        raise InferenceError(str(e.args[0])) from None
    return factory(negative_slope=float(slope if slope is not None else 0.01))


def predict_logits(params: Mapping[str, np.ndarray], x: np.ndarray, config_yaml: str = "") -> np.ndarray:
    """Logits ``(N, C)`` of the network ``params`` for ``x: (N, 784)``.

    Args:
        params: ``W1: (784, h1), b1: (h1,), ..., WL: (h_{L-1}, C), bL: (C,)``.
        x: features in [0, 1]; cast to the weights' dtype (as in training).
        config_yaml: the weights file's embedded config; picks the activation.
    """
    if x.ndim != 2 or x.shape[1] != params["W1"].shape[0]:
        raise InferenceError(f"expected inputs of shape (N, {params['W1'].shape[0]}), got {x.shape}")
    model = MLP(dict(params), activation_from_config(parse_config(config_yaml)))
    # Training fed the network features in the weights' dtype; float64 inputs
    # to float32 weights would otherwise upcast every layer.
    return model.predict_logits(np.asarray(x, dtype=model.dtype))


def predict_proba(params: Mapping[str, np.ndarray], x: np.ndarray, config_yaml: str = "") -> np.ndarray:
    """Class probabilities ``(N, C)`` (rows sum to 1) for ``x: (N, 784)``; see :func:`predict_logits`."""
    return softmax(predict_logits(params, x, config_yaml))


# ----------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvalResult:
    """Scores of a network on a labelled set.

    Attributes:
        accuracy: fraction correct over all ``N`` images.
        per_class: ``(C,)`` accuracy within each true class (NaN for an absent class).
        support: ``(C,)`` images per true class.
        confusion: ``(C, C)`` counts, row = true class, column = predicted.
    """

    accuracy: float
    per_class: np.ndarray
    support: np.ndarray
    confusion: np.ndarray


def evaluate(params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, config_yaml: str = "") -> EvalResult:
    """Score ``params`` on ``x: (N, 784)`` with labels ``y: (N,)``.

    Predictions are the argmax of the logits, exactly as the training run
    scored its test set (a softmax first could turn near-ties into exact ties).
    """
    logits = predict_logits(params, x, config_yaml)
    num_classes = logits.shape[1]
    pred = logits.argmax(axis=1)
    y = np.asarray(y, dtype=np.int64)
    cm = confusion_matrix(y, pred.astype(np.int64), num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.diag(cm) / support
    return EvalResult(accuracy=float(np.mean(pred == y)), per_class=per_class, support=support, confusion=cm)


def load_test_set(config: Mapping[str, Any],
                  dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The test set of the dataset a weights file was trained on.

    Args:
        config: the weights file's embedded config; ``data.name`` (default
            ``mnist``), ``data.dir`` and ``data.cache_dir`` are honoured.
        dtype: feature dtype (the weights' dtype, as in training).

    Returns:
        ``(x: (N, 784), y: (N,) int64, class_names)``.

    Raises:
        mnist_np.data.DataError: unknown dataset or no source worked.
    """
    d = config.get("data") or {}
    raw = data.load_dataset(str(d.get("name") or "mnist"), data_dir=d.get("dir"), cache_dir=d.get("cache_dir"))
    return images_to_features(raw.test_images, dtype), raw.test_labels.astype(np.int64), raw.class_names


def format_report(result: EvalResult, class_names: Sequence[str]) -> str:
    """Accuracy, per-class accuracy and the confusion matrix as plain text."""
    width = max(len(n) for n in class_names)
    lines = [f"accuracy {result.accuracy:.4f} ({int(np.trace(result.confusion))}/{int(result.confusion.sum())})", ""]
    lines.append("per-class accuracy:")
    for i, name in enumerate(class_names):
        lines.append(f"  {i}  {name:<{width}}  {result.per_class[i]:.4f}  (n={int(result.support[i])})")
    lines += ["", "confusion matrix (rows: true class, columns: predicted):"]
    cell = max(5, len(str(int(result.confusion.max()))) + 1)
    lines.append("true\\pred" + "".join(f"{j:>{cell}}" for j in range(len(class_names))))
    for i in range(len(class_names)):
        lines.append(f"{i:>9}" + "".join(f"{int(v):>{cell}}" for v in result.confusion[i]))
    return "\n".join(lines)
