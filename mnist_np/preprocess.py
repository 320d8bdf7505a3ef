"""MNIST-style preprocessing: one image of a digit, any size and mode, framed the way MNIST was.

Preprocessing follows how MNIST itself was made (LeCun et al.): the digit is
cropped to its bounding box, scaled with anti-aliasing so that its longer
side is 20 px (aspect ratio kept), and placed in a 28x28 field so that its
intensity-weighted centre of mass sits at the field's centre. A network
trained on MNIST has only ever seen digits framed like that, so a photo or a
drawing has to be framed the same way before it can be classified.

NumPy and Pillow only.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageOps

__all__ = ["InferenceError", "preprocess_image"]

SIDE = 28  #: output field, pixels per side
BOX = 20  #: the digit's longer side inside the field, as in MNIST
CENTRE = 14  #: where the centre of mass goes, row and column index (as in MNIST)
LIGHT_BACKGROUND = 127  #: a border median above this means dark ink on light paper
#: Pixels below this fraction of the brightest one count as background: they are
#: zeroed and ignored for the bounding box (paper texture, JPEG noise, shadows).
INK_FRACTION = 0.1
#: A peak contrast (0-255 levels above the background) below this is an empty image.
MIN_CONTRAST = 16.0


class InferenceError(ValueError):
    """An input that cannot be classified: unreadable file, not an image or IDX, blank image."""


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
