"""Scores of a network on labelled data: mean cross-entropy, accuracy, confusion counts."""

from __future__ import annotations

import math

import numpy as np

from mnist_np.nn.losses import cross_entropy
from mnist_np.nn.model import MLP


def evaluate(model: MLP, x: np.ndarray, y: np.ndarray, batch_size: int = 10_000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``x: (N, 784)``, ``y: (N,)`` (NaN for N = 0)."""
    if len(y) == 0:
        return math.nan, math.nan
    return score_logits(model.predict_logits(x, batch_size), y)


def score_logits(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``logits: (N, C)`` against ``y: (N,)``."""
    return cross_entropy(logits, y), float(np.mean(logits.argmax(axis=1) == y))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """``(C, C)`` int counts: row = true class, column = predicted class."""
    return np.bincount(y_true * num_classes + y_pred,
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)
