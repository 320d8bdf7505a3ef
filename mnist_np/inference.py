"""Inference on new images: MNIST-style preprocessing, image/IDX loading, prediction, evaluation.

Part of the numeric core: NumPy, Pillow and PyYAML (to read the config text
embedded in weights files) only -- no Hydra, no MLflow -- so it works on a
weights file with nothing else around it.

Preprocessing follows how MNIST itself was made (LeCun et al.): the digit is
cropped to its bounding box, scaled with anti-aliasing so that its longer
side is 20 px (aspect ratio kept), and placed in a 28x28 field so that its
intensity-weighted centre of mass sits at the field's centre. A network
trained on MNIST has only ever seen digits framed like that, so a photo or a
drawing has to be framed the same way before it can be classified.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_np import data, registry
from mnist_np.layers import Activation
from mnist_np.losses import softmax
from mnist_np.model import MLP
from mnist_np.plots import confusion_matrix

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

SIDE = 28  #: output field, pixels per side
BOX = 20  #: the digit's longer side inside the field, as in MNIST
CENTRE = 14  #: where the centre of mass goes, row and column index (as in MNIST)
LIGHT_BACKGROUND = 127  #: a border median above this means dark ink on light paper
#: Pixels below this fraction of the brightest one count as background: they are
#: zeroed and ignored for the bounding box (paper texture, JPEG noise, shadows).
INK_FRACTION = 0.1
#: A peak contrast (0-255 levels above the background) below this is an empty image.
MIN_CONTRAST = 16.0
ACCEPTED = "accepted: images Pillow can open (PNG, JPEG, ...) and IDX image files (N, 28, 28), raw or .gz"


class InferenceError(ValueError):
    """An input that cannot be classified: unreadable file, not an image or IDX, blank image."""


# ----------------------------------------------------------------- preprocessing


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite a transparent image onto a background that contrasts with its ink.

    Drawing apps save strokes on a transparent canvas. Converting to grayscale
    would drop the alpha channel and keep whatever colour the transparent
    pixels happen to hold (usually black) -- invisible black ink on black.
    So the opaque pixels' mean brightness decides: dark ink goes on white,
    light ink on black.
    """
    rgba = img.convert("RGBA")
    arr = np.asarray(rgba, dtype=np.float32)  # (H, W, 4)
    alpha = arr[..., 3] / 255.0
    if alpha.min() >= 1.0:
        return rgba.convert("RGB")
    luma = arr[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (H, W)
    weight = alpha.sum()
    ink = float((luma * alpha).sum() / weight) if weight > 0 else 0.0
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255) if ink < 128 else (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _grayscale(img: Image.Image) -> np.ndarray:
    """``img`` (any mode, any size) -> float32 ``(H, W)`` luminance in [0, 255]."""
    img = ImageOps.exif_transpose(img)  # phone photos carry their rotation as a tag
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        img = _flatten_alpha(img)
    if img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit and float images: convert("L") would clip them, not scale.
        # Scale by the range the values live in, never by their own min/max:
        # stretching would turn a blank image's sensor noise into full-contrast ink.
        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max()) if arr.size else 0.0
        if img.mode.startswith("I;16"):
            scale = 255.0 / 65535.0
        else:
            scale = 255.0 if top <= 1.0 else 1.0 if top <= 255.0 else 255.0 / 65535.0
        return np.clip(arr * scale, 0.0, 255.0)
    return np.asarray(img.convert("L"), dtype=np.float32)


def _border(gray: np.ndarray) -> np.ndarray:
    """The outermost pixels of ``gray: (H, W)`` as one flat array (what the background looks like)."""
    if min(gray.shape) <= 2:
        return gray.ravel()
    return np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])


def preprocess_image(img: Image.Image) -> np.ndarray:
    """One image of a digit, any size and mode -> MNIST features ``(784,)`` float32 in [0, 1].

    Steps: grayscale; invert when the background is light (MNIST digits are
    bright on black); subtract the background level and drop pixels fainter
    than ``INK_FRACTION`` of the brightest; crop to the bounding box of what
    is left; resize (Lanczos) so the longer side is 20 px; rescale to a peak
    of 1; paste into a black 28x28 field with the intensity-weighted centre
    of mass at row and column index 14, clipping what falls outside.

    Raises:
        InferenceError: the image is blank (no pixel stands out from the background).
    """
    gray = _grayscale(img)  # (H, W) in [0, 255]
    if gray.size == 0:
        raise InferenceError("empty image (0 pixels)")
    if float(np.median(_border(gray))) > LIGHT_BACKGROUND:
        gray = 255.0 - gray
    # Paper photographed under real light is grey, not black, once inverted:
    # its level is the border's median, and only what rises above it is ink.
    gray = np.clip(gray - float(np.median(_border(gray))), 0.0, None)
    peak = float(gray.max())
    if peak < MIN_CONTRAST:
        raise InferenceError(f"blank image: no pixel stands out from the background by {MIN_CONTRAST:g} levels or more")
    gray[gray < INK_FRACTION * peak] = 0.0

    rows = np.flatnonzero(gray.any(axis=1))
    cols = np.flatnonzero(gray.any(axis=0))
    digit = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # (h, w), tight

    h, w = digit.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL sizes are (width, height)
    # A float32 array becomes a mode "F" image, which keeps the float levels
    # through the filter; LANCZOS averages over the whole footprint when
    # shrinking, which is the anti-aliasing MNIST's normalisation applied.
    box = np.asarray(Image.fromarray(digit).resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    box = np.clip(box, 0.0, None)  # Lanczos rings slightly below 0 next to strokes
    top = float(box.max())
    if top <= 0.0:  # cannot happen for a non-blank crop, but never divide by zero
        raise InferenceError("blank image after resizing")
    box /= top

    return _paste_centred(box).ravel()


def _paste_centred(box: np.ndarray) -> np.ndarray:
    """Place ``box: (h, w)`` (h, w <= 20) in a zero ``(28, 28)`` field, centre of mass at index (14, 14).

    Index coordinates (pixel ``i`` at ``i``), as MNIST itself: the mean
    centre of mass of its test digits is (14.0, 14.0) in these coordinates,
    half a pixel below and right of the field's geometric centre (13.5).
    The shift is rounded to whole pixels, as MNIST did, so the centre of mass
    lands within half a pixel of 14 unless the digit is clipped at an edge.
    """
    h, w = box.shape
    mass = float(box.sum())
    cy = float((box.sum(axis=1) * np.arange(h)).sum() / mass)
    cx = float((box.sum(axis=0) * np.arange(w)).sum() / mass)
    # math.floor(v + 0.5), not round(): Python rounds halves to even, which
    # would make the placement depend on parity.
    top, left = math.floor(CENTRE - cy + 0.5), math.floor(CENTRE - cx + 0.5)
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, SIDE), min(left + w, SIDE)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = box[y0 - top : y1 - top, x0 - left : x1 - left]
    np.clip(out, 0.0, 1.0, out=out)
    return out


def images_to_features(images: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` -> ``(N, 784)`` in [0, 1] as ``dtype``.

    The same arithmetic as training's features (convert, then divide by 255
    in ``dtype``), so scores computed here match the ones logged by a run.
    """
    dtype = np.dtype(dtype)
    out = np.ascontiguousarray(images.reshape(len(images), -1), dtype=dtype)
    np.divide(out, dtype.type(255), out=out)
    return out


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
        factory = registry.lookup(registry.ACTIVATIONS, str(name), "model.activation")
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


def load_test_set(config: Mapping[str, Any], dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
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
