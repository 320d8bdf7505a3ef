"""Short names -> components: the one place where a name in a config becomes an object.

Configs name components (``model.activation: relu``, ``optimizer.name:
adam``) and these maps turn the names into objects. A config read back from
a run can therefore never make us import arbitrary code, and renaming a
module never breaks an old run's config.

The optimizer factories take every setting explicitly, with no defaults of
their own: the config schema is the one source of every default, so a
config that lacks a key fails validation instead of silently training with
a value from here.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from mnist_np.nn.activations import DEFAULT_NEGATIVE_SLOPE, Activation, LeakyReLU, ReLU, Sigmoid, Tanh
from mnist_np.nn.initializers import Initializer, he_normal, normal, xavier_uniform
from mnist_np.nn.optim import SGD, Adam, Optimizer
from mnist_np.nn.schedules import SCHEDULES

ACTIVATIONS: dict[str, Callable[..., Activation]] = {
    "relu": lambda **_: ReLU(),
    "leaky_relu": lambda negative_slope=DEFAULT_NEGATIVE_SLOPE, **_: LeakyReLU(negative_slope=negative_slope),
    "tanh": lambda **_: Tanh(),
    "sigmoid": lambda **_: Sigmoid(),
}

INITIALIZERS: dict[str, Initializer] = {
    "he": he_normal,
    "xavier": xavier_uniform,
    "normal": normal,
}

OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": lambda *, momentum, nesterov, weight_decay: SGD(momentum, nesterov, weight_decay),
    "adam": lambda *, betas, eps, weight_decay: Adam(tuple(betas), eps, weight_decay),
    "adamw": lambda *, betas, eps, weight_decay: Adam(tuple(betas), eps, weight_decay, decoupled=True),
}

__all__ = ["ACTIVATIONS", "DTYPES", "INITIALIZERS", "OPTIMIZERS", "SCHEDULES", "lookup"]

DTYPES: tuple[str, ...] = ("float32", "float64")


def lookup(registry: Mapping[str, Any], name: str, key: str) -> Any:
    """``registry[name]``, or a ``KeyError`` that names ``key`` and the allowed names."""
    try:
        return registry[name]
    except KeyError:
        raise KeyError(f"{key}={name!r} is not known; allowed: {', '.join(sorted(registry))}") from None
