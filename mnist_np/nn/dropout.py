"""Inverted dropout: masks drawn for a whole batch, applied to hidden activations while training."""

from __future__ import annotations

import numpy as np


def dropout_mask(rng: np.random.Generator, out: np.ndarray, rate: float, keep: np.ndarray | None = None) -> np.ndarray:
    """Fill ``out`` with an inverted-dropout mask: 0 with probability ``rate``, else ``1/(1-rate)``.

    Scaling at train time means evaluation needs no change at all. ``out``
    (float32 or float64, e.g. ``(N, H)``) first receives the uniform draws;
    ``keep``, a bool array of the same shape, is scratch space (allocated
    when not given).
    """
    rng.random(out=out, dtype=out.dtype)
    keep = np.greater_equal(out, rate, out=keep)
    return np.multiply(keep, out.dtype.type(1.0 / (1.0 - rate)), out=out)
