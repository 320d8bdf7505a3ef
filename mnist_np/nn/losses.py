"""Softmax and cross-entropy, fused.

Computing the softmax and the loss together lets the gradient with respect to
the logits be ``(softmax - onehot(y)) / N``, which we form by subtracting 1 at
the label positions: no one-hot matrix is ever built, and subtracting the row
maximum first keeps ``exp`` from overflowing for any finite logits.
"""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``logits: (N, C)`` -> log-probabilities ``(N, C)``, stable for large |logits|."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return shifted


def softmax(logits: np.ndarray) -> np.ndarray:
    """``logits: (N, C)`` -> probabilities ``(N, C)``, rows summing to 1."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of ``logits: (N, C)`` against integer ``labels: (N,)``."""
    logp = log_softmax(logits)
    return float(-logp[np.arange(len(labels)), labels].mean())


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray,
                          grad_scale: float | None = None) -> tuple[float, np.ndarray]:
    """Fused loss and gradient.

    Args:
        logits: ``(N, C)`` scores; overwritten with the gradient to save a buffer.
        labels: ``(N,)`` integer classes in ``[0, C)``.
        grad_scale: the gradient is ``(softmax - onehot) * grad_scale``;
            ``None`` means ``1 / N``, the gradient of the mean. A shard of a
            larger batch passes ``1 / batch_size`` so the shards' gradients
            add up to the batch's.

    Returns:
        ``(loss, dlogits)``: the mean cross-entropy over these ``N`` rows (a
        Python float) and ``dL/dlogits: (N, C)``, which is the ``logits``
        array itself.
    """
    n = logits.shape[0]
    (loss,) = softmax_cross_entropy_parts(logits, labels, 1.0 / n if grad_scale is None else grad_scale, [(0, n)])
    return loss, logits


def softmax_cross_entropy_parts(logits: np.ndarray, labels: np.ndarray, grad_scale: float,
                                parts: list[tuple[int, int]]) -> list[float]:
    """:func:`softmax_cross_entropy` of all ``N`` rows at once, its loss averaged over each part ``lo:hi`` alone.

    ``logits: (N, C)`` is overwritten with ``(softmax - onehot) * grad_scale``,
    row by row; each part's loss is the one :func:`softmax_cross_entropy`
    gives for ``logits[lo:hi]`` by itself (its rows' terms, summed alone).
    """
    rows = np.arange(logits.shape[0])
    logits -= logits.max(axis=1, keepdims=True)
    # Read the true-class logit before exp: log p_y = z_y - log(sum e^z) stays
    # finite even where e^{z_y} underflows to 0.
    picked = logits[rows, labels]
    np.exp(logits, out=logits)
    sums = logits.sum(axis=1, keepdims=True)
    log_sums = np.log(sums)
    losses = [float(log_sums[lo:hi].sum() - picked[lo:hi].sum()) / (hi - lo) for lo, hi in parts]
    # e / (sum / scale) is softmax * scale: the scale rides on the (N, 1)
    # sums instead of costing another pass over the (N, C) gradient.
    sums *= sums.dtype.type(1.0 / grad_scale)
    logits /= sums
    logits[rows, labels] -= logits.dtype.type(grad_scale)
    return losses
