"""The network: a multi-layer perceptron as a stack of dense layers.

``sizes = [784, 128, 10]`` is the seed tutorial's network: ``W1: (784, 128)``,
``b1: (128,)``, ``W2: (128, 10)``, ``b2: (10,)``. Parameters live in one flat
dict keyed ``W1, b1, W2, b2, ...`` -- the same names they carry in ``.npz``
files and the names optimizer state is keyed by.
"""

from __future__ import annotations

import numpy as np

from mnist_np.layers import Activation, Initializer, dropout_mask


def param_names(num_layers: int) -> list[str]:
    """``["W1", "b1", ..., "WL", "bL"]`` in layer order (the order hashes and files use)."""
    return [f"{kind}{i}" for i in range(1, num_layers + 1) for kind in ("W", "b")]


class MLP:
    """Dense layers with an activation between them and a linear output.

    Args:
        params: ``{"W1": (in, h1), "b1": (h1,), ..., "WL": (h_{L-1}, C), "bL": (C,)}``.
        activation: nonlinearity after every hidden layer.
        dropout: inverted-dropout rate on hidden activations during training.
    """

    def __init__(self, params: dict[str, np.ndarray], activation: Activation, dropout: float = 0.0) -> None:
        if not params or len(params) % 2:
            raise ValueError("params must hold W1, b1, ..., WL, bL")
        self.num_layers = len(params) // 2
        self.params = {k: params[k] for k in param_names(self.num_layers)}
        self.activation = activation
        self.dropout = float(dropout)
        self.dtype = self.params["W1"].dtype
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        # Forward-pass values the backward pass needs; set by forward(train=True).
        self._inputs: list[np.ndarray] = []
        self._hidden: list[np.ndarray] = []
        self._masks: list[np.ndarray | None] = []

    @classmethod
    def initialize(
        cls,
        sizes: list[int],
        activation: Activation,
        init: Initializer,
        rng: np.random.Generator,
        init_scale: float = 0.01,
        dropout: float = 0.0,
        dtype: np.dtype | type = np.float32,
    ) -> "MLP":
        """New network with weights drawn from ``init`` and zero biases.

        Weights are drawn in float64 and then cast, so float32 and float64 runs
        of one seed start from the same values (up to rounding).
        """
        dtype = np.dtype(dtype)
        params: dict[str, np.ndarray] = {}
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            params[f"W{i}"] = np.ascontiguousarray(init(rng, fan_in, fan_out, init_scale), dtype=dtype)
            params[f"b{i}"] = np.zeros(fan_out, dtype=dtype)
        return cls(params, activation, dropout)

    @property
    def sizes(self) -> list[int]:
        """Layer widths, input first: e.g. ``[784, 128, 10]``."""
        return [self.params["W1"].shape[0]] + [self.params[f"W{i}"].shape[1] for i in range(1, self.num_layers + 1)]

    def forward(self, x: np.ndarray, train: bool = False, rng: np.random.Generator | None = None) -> np.ndarray:
        """``x: (N, 784)`` -> ``logits: (N, C)``.

        With ``train=True`` the values needed by :meth:`backward` are kept and
        dropout (if any) is applied using ``rng``.
        """
        use_dropout = train and self.dropout > 0
        if use_dropout and rng is None:
            raise ValueError("dropout needs a random generator")
        if train:
            self._inputs, self._hidden, self._masks = [], [], []
        a = x
        for i in range(1, self.num_layers + 1):
            if train:
                self._inputs.append(a)
            z = a @ self.params[f"W{i}"]
            z += self.params[f"b{i}"]
            if i == self.num_layers:
                return z
            h = self.activation.forward(z)
            mask = None
            if use_dropout:
                mask = dropout_mask(rng, h.shape, self.dropout, h.dtype)  # type: ignore[arg-type]
                a = h * mask
            else:
                a = h
            if train:
                self._hidden.append(h)
                self._masks.append(mask)
        raise AssertionError("unreachable")  # pragma: no cover

    def backward(self, dlogits: np.ndarray) -> dict[str, np.ndarray]:
        """Gradients of the loss for the last ``forward(train=True)``.

        Args:
            dlogits: ``dL/dlogits: (N, C)``.

        Returns:
            ``self.grads``: a dict shaped like ``params``, overwritten on every call.
        """
        dz = dlogits
        for i in range(self.num_layers, 0, -1):
            a_prev = self._inputs[i - 1]
            np.matmul(a_prev.T, dz, out=self.grads[f"W{i}"])
            np.sum(dz, axis=0, out=self.grads[f"b{i}"])
            if i == 1:
                break
            da = dz @ self.params[f"W{i}"].T
            mask = self._masks[i - 2]
            if mask is not None:
                da *= mask
            dz = self.activation.backward(da, self._hidden[i - 2])
        return self.grads

    def predict_logits(self, x: np.ndarray, batch_size: int = 10_000) -> np.ndarray:
        """Logits ``(N, C)`` for ``x: (N, 784)``, in chunks to bound memory."""
        out = np.empty((x.shape[0], self.params[f"W{self.num_layers}"].shape[1]), dtype=self.dtype)
        for start in range(0, x.shape[0], batch_size):
            out[start : start + batch_size] = self.forward(x[start : start + batch_size])
        return out
