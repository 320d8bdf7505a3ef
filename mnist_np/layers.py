"""Building blocks of the network: a dense layer, activations, initialisers, dropout.

Shapes: a batch is ``(N, features)``; a dense layer holds ``W: (in, out)`` and
``b: (out,)`` so the forward pass is ``X @ W + b`` with no transposes.
Activations work in place, because on the hot path an extra
``(N, hidden)`` temporary per call costs more than the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np


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
    negative_slope: float = 0.01
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


Initializer = Callable[[np.random.Generator, int, int, float], np.ndarray]


def he_normal(rng: np.random.Generator, fan_in: int, fan_out: int, scale: float) -> np.ndarray:
    """N(0, 2/fan_in): keeps activation variance constant through ReLU layers."""
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))


def xavier_uniform(rng: np.random.Generator, fan_in: int, fan_out: int, scale: float) -> np.ndarray:
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def normal(rng: np.random.Generator, fan_in: int, fan_out: int, scale: float) -> np.ndarray:
    """N(0, scale^2); ``scale=0.01`` is the seed tutorial's initialisation."""
    return rng.normal(0.0, scale, size=(fan_in, fan_out))


def dropout_mask(rng: np.random.Generator, out: np.ndarray, rate: float, keep: np.ndarray | None = None) -> np.ndarray:
    """Fill ``out`` with an inverted-dropout mask: 0 with probability ``rate``, else ``1/(1-rate)``.

    Scaling at train time means evaluation needs no change at all. ``out``
    (float32 or float64) first receives the uniform draws; ``keep``, a bool
    array of the same shape, is scratch space (allocated when not given).
    """
    rng.random(out=out, dtype=out.dtype)
    keep = np.greater_equal(out, rate, out=keep)
    return np.multiply(keep, out.dtype.type(1.0 / (1.0 - rate)), out=out)
