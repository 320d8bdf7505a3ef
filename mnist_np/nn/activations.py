"""Elementwise nonlinearities with hand-written derivatives.

They work in place, because on the hot path an extra ``(N, hidden)``
temporary per call costs more than the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

DEFAULT_NEGATIVE_SLOPE = 0.01  # leaky_relu's slope for z < 0 when a config names none


class Activation(Protocol):
    """An elementwise nonlinearity with a hand-written derivative."""

    name: str

    def forward(self, z: np.ndarray) -> np.ndarray:
        """``z: (N, H)`` pre-activation -> ``a: (N, H)``, computed in place: returns ``z``."""

    def backward(self, grad_a: np.ndarray, a: np.ndarray) -> np.ndarray:
        """``dL/da (N, H)`` and the forward output ``a`` -> ``dL/dz (N, H)``; may overwrite ``grad_a``."""


@dataclass(frozen=True)
class ReLU:
    name: str = "relu"

    def forward(self, z: np.ndarray) -> np.ndarray:
        return np.maximum(z, 0, out=z)

    def backward(self, grad_a: np.ndarray, a: np.ndarray) -> np.ndarray:
        # a > 0 exactly where z > 0, so the output is enough to route the
        # gradient; a multiply by the boolean mask is one vectorised pass,
        # where masked assignment would gather and scatter.
        return np.multiply(grad_a, a > 0, out=grad_a)


@dataclass(frozen=True)
class LeakyReLU:
    negative_slope: float = DEFAULT_NEGATIVE_SLOPE
    name: str = "leaky_relu"

    def forward(self, z: np.ndarray) -> np.ndarray:
        return np.multiply(z, z.dtype.type(self.negative_slope), out=z, where=z < 0)

    def backward(self, grad_a: np.ndarray, a: np.ndarray) -> np.ndarray:
        # For slope > 0 the sign of a equals the sign of z.
        grad_a[a <= 0] *= grad_a.dtype.type(self.negative_slope)
        return grad_a


@dataclass(frozen=True)
class Tanh:
    name: str = "tanh"

    def forward(self, z: np.ndarray) -> np.ndarray:
        return np.tanh(z, out=z)

    def backward(self, grad_a: np.ndarray, a: np.ndarray) -> np.ndarray:
        grad_a *= 1 - a * a
        return grad_a


@dataclass(frozen=True)
class Sigmoid:
    name: str = "sigmoid"

    def forward(self, z: np.ndarray) -> np.ndarray:
        # 0.5 * (1 + tanh(z / 2)) is the logistic function without exp overflow.
        z *= z.dtype.type(0.5)
        np.tanh(z, out=z)
        z += 1
        z *= z.dtype.type(0.5)
        return z

    def backward(self, grad_a: np.ndarray, a: np.ndarray) -> np.ndarray:
        grad_a *= a * (1 - a)
        return grad_a
