"""Short names -> components.

Configs name components (``model.activation: relu``, ``optimizer.name: adam``)
and these maps turn the names into objects. A config read back from a run can
therefore never make us import arbitrary code, and renaming a module never
breaks an old run's config.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from mnist_np.layers import Activation, Initializer, LeakyReLU, ReLU, Sigmoid, Tanh, he_normal, normal, xavier_uniform
from mnist_np.optim import SGD, Adam, Optimizer, Schedule

ACTIVATIONS: dict[str, Callable[..., Activation]] = {
    "relu": lambda **_: ReLU(),
    "leaky_relu": lambda negative_slope=0.01, **_: LeakyReLU(negative_slope=negative_slope),
    "tanh": lambda **_: Tanh(),
    "sigmoid": lambda **_: Sigmoid(),
}

INITIALIZERS: dict[str, Initializer] = {
    "he": he_normal,
    "xavier": xavier_uniform,
    "normal": normal,
}

OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": lambda momentum=0.0, nesterov=False, weight_decay=0.0, **_: SGD(momentum, nesterov, weight_decay),
    "adam": lambda betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, **_: Adam(betas, eps, weight_decay),
    "adamw": lambda betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, **_: Adam(betas, eps, weight_decay, decoupled=True),
}

SCHEDULES: tuple[str, ...] = ("constant", "step", "cosine")

DTYPES: tuple[str, ...] = ("float32", "float64")


def lookup(registry: Mapping[str, Any], name: str, key: str) -> Any:
    """``registry[name]``, or a ``KeyError`` that names ``key`` and the allowed names."""
    try:
        return registry[name]
    except KeyError:
        raise KeyError(f"{key}={name!r} is not known; allowed: {', '.join(sorted(registry))}") from None


def build_schedule(name: str, base_lr: float, total_epochs: int, **kwargs: Any) -> Schedule:
    """A :class:`Schedule` by name (checked against :data:`SCHEDULES`)."""
    if name not in SCHEDULES:
        raise KeyError(f"schedule={name!r} is not known; allowed: {', '.join(SCHEDULES)}")
    return Schedule(name=name, base_lr=base_lr, total_epochs=total_epochs, **kwargs)
