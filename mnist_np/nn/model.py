"""The network: a multi-layer perceptron as a stack of dense layers.

``sizes = [784, 128, 10]`` is the seed tutorial's network: ``W1: (784, 128)``,
``b1: (128,)``, ``W2: (128, 10)``, ``b2: (10,)``. Parameters live in one flat
dict keyed ``W1, b1, W2, b2, ...`` -- the same names they carry in ``.npz``
files and the names optimizer state is keyed by.

Inference is :meth:`MLP.forward` (any number of rows, nothing kept).
Training is three calls on one (shard of a) mini-batch inside a
preallocated :class:`Workspace` -- :meth:`MLP.forward_train` (keeping
each layer's activations), the fused softmax cross-entropy
(:func:`mnist_np.nn.losses.softmax_cross_entropy`), :meth:`MLP.backward`
(writing the gradients where the caller says) -- or the three in one,
:meth:`MLP.gradients`. Several shards of one batch can so be computed at the
same time, each in its own workspace, without allocating on the hot path.
"""

from __future__ import annotations

import numpy as np

from mnist_np.nn.activations import Activation
from mnist_np.nn.initializers import Initializer
from mnist_np.nn.losses import softmax_cross_entropy_parts


def param_names(num_layers: int) -> list[str]:
    """``["W1", "b1", ..., "WL", "bL"]`` in layer order (the order hashes and files use)."""
    return [f"{kind}{i}" for i in range(1, num_layers + 1) for kind in ("W", "b")]


class Workspace:
    """Preallocated buffers for :meth:`MLP.gradients` on up to ``rows`` samples.

    ``x: (rows, 784)`` the gathered inputs; per hidden layer ``h`` (the
    activation, computed in place over the pre-activation) and, with dropout,
    ``a`` (the activation times the mask, the next layer's input); ``logits:
    (rows, C)``, overwritten by their gradient; ``da`` per hidden layer, the
    gradient flowing back into it. One workspace serves one process.
    """

    def __init__(self, sizes: list[int], rows: int, dtype: np.dtype, dropout: bool) -> None:
        hidden = sizes[1:-1]
        self.rows = rows
        self.x = np.empty((rows, sizes[0]), dtype=dtype)
        self.h = [np.empty((rows, width), dtype=dtype) for width in hidden]
        self.a = [np.empty((rows, width), dtype=dtype) for width in hidden] if dropout else self.h
        self.da = [np.empty((rows, width), dtype=dtype) for width in hidden]
        self.logits = np.empty((rows, sizes[-1]), dtype=dtype)
        self.pixels: np.ndarray | None = None  # uint8 rows before scaling, when the data are pixels


class MLP:
    """Dense layers with an activation between them and a linear output.

    Args:
        params: ``{"W1": (in, h1), "b1": (h1,), ..., "WL": (h_{L-1}, C), "bL": (C,)}``.
            The dict is the model's: an optimizer may point its entries at
            other storage (see :meth:`mnist_np.nn.optim.Optimizer.attach`), so
            read ``model.params[name]`` rather than keeping an array.
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

    def load_params(self, params: dict[str, np.ndarray]) -> None:
        """Copy ``params`` (same names and shapes) into the model's arrays, cast to its dtype."""
        for name, target in self.params.items():
            np.copyto(target, params[name], casting="unsafe")

    def workspace(self, rows: int) -> Workspace:
        """Buffers for training on up to ``rows`` samples at a time (see :meth:`gradients`)."""
        return Workspace(self.sizes, rows, self.dtype, dropout=self.dropout > 0)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Inference: ``x: (N, 784)`` -> ``logits: (N, C)``, no dropout, nothing kept."""
        a = x
        for i in range(1, self.num_layers + 1):
            z = a @ self.params[f"W{i}"]
            z += self.params[f"b{i}"]
            if i == self.num_layers:
                return z
            a = self.activation.forward(z)
        raise AssertionError("unreachable")  # pragma: no cover

    def forward_train(self, ws: Workspace, n: int, masks: list[np.ndarray] | None = None) -> np.ndarray:
        """Forward pass over ``ws.x[:n]`` that keeps what :meth:`backward` needs.

        Args:
            ws: workspace whose first ``n`` rows of ``x`` hold the inputs ``(n, 784)``.
            masks: per hidden layer, ``(n, H)`` inverted-dropout masks (0 or
                ``1/(1-rate)``), drawn by the caller so that the masks of a
                batch do not depend on how it is split into shards.

        Returns:
            ``logits: (n, C)``, a view of ``ws.logits`` (the loss overwrites it with its gradient).
        """
        last = self.num_layers
        a = ws.x[:n]
        for i in range(1, last):
            h = np.matmul(a, self.params[f"W{i}"], out=ws.h[i - 1][:n])
            h += self.params[f"b{i}"]
            self.activation.forward(h)
            a = np.multiply(h, masks[i - 1], out=ws.a[i - 1][:n]) if masks is not None else h
        logits = np.matmul(a, self.params[f"W{last}"], out=ws.logits[:n])
        logits += self.params[f"b{last}"]
        return logits

    def backward(
        self, ws: Workspace, n: int, dlogits: np.ndarray, grads: dict[str, np.ndarray],
        masks: list[np.ndarray] | None = None, shards: list[tuple[int, int, dict[str, np.ndarray]]] | None = None,
    ) -> None:
        """Backward pass from ``dlogits: (n, C)`` through the activations :meth:`forward_train` kept in ``ws``.

        ``grads`` (arrays shaped like ``params``) are overwritten with
        ``dloss/dparam``; ``masks`` must be the ones the forward pass used.
        ``shards``: ``(lo, hi, grads)`` per shard instead, each shard's
        gradients summed over its rows ``lo:hi`` alone (the products that
        add rows up are made per shard; the row-wise ones once for all rows).
        """
        parts = [(0, n, grads)] if shards is None else shards
        dz = dlogits
        for i in range(self.num_layers, 0, -1):
            layer_input = ws.x[:n] if i == 1 else (ws.a if masks is not None else ws.h)[i - 2][:n]
            for lo, hi, g in parts:
                np.matmul(layer_input[lo:hi].T, dz[lo:hi], out=g[f"W{i}"])
                np.sum(dz[lo:hi], axis=0, out=g[f"b{i}"])
            if i == 1:
                break
            da = np.matmul(dz, self.params[f"W{i}"].T, out=ws.da[i - 2][:n])
            if masks is not None:
                da *= masks[i - 2]
            dz = self.activation.backward(da, ws.h[i - 2][:n])

    def gradients(
        self,
        ws: Workspace,
        n: int,
        y: np.ndarray,
        grads: dict[str, np.ndarray],
        grad_scale: float,
        masks: list[np.ndarray] | None = None,
    ) -> tuple[float, int]:
        """Forward, fused softmax cross-entropy and backward over ``ws.x[:n]``, in one call.

        Args:
            ws: workspace whose first ``n`` rows of ``x`` hold the inputs ``(n, 784)``.
            y: ``(n,)`` integer labels.
            grads: overwritten with ``grad_scale * sum over the n samples of dloss/dparam``.
            grad_scale: ``1 / batch_size``, so the gradients of a batch's
                shards add up to the gradient of the batch's mean loss.
            masks: per hidden layer ``(n, H)`` dropout masks (see :meth:`forward_train`).

        Returns:
            ``(loss_sum, correct)``: the summed cross-entropy of the ``n``
            samples and how many the forward pass classified right.
        """
        return self._part_gradients(ws, n, y, [(0, n, grads)], grad_scale, masks)[0]

    def shard_gradients(
        self,
        ws: Workspace,
        n: int,
        y: np.ndarray,
        shards: list[tuple[int, int, dict[str, np.ndarray]]],
        grad_scale: float,
        masks: list[np.ndarray] | None = None,
    ) -> list[tuple[float, int]]:
        """:meth:`gradients` of several shards of ``ws.x[:n]`` at once, each ``(lo, hi, grads)`` its own.

        The row-wise products (forward, and the gradient flowing back into
        each hidden layer) are made once for all ``n`` rows; the loss and
        the products that sum over rows, per shard. Each shard's result has
        the bits of :meth:`gradients` on its rows alone wherever BLAS
        computes a row of a product the same whatever the rows around it
        (:class:`mnist_np.train.sharded.ShardedStepper` checks that before
        relying on it).

        Returns:
            per shard, ``(loss_sum, correct)`` over its rows.
        """
        return self._part_gradients(ws, n, y, shards, grad_scale, masks)

    def _part_gradients(self, ws: Workspace, n: int, y: np.ndarray,
                        shards: list[tuple[int, int, dict[str, np.ndarray]]], grad_scale: float,
                        masks: list[np.ndarray] | None) -> list[tuple[float, int]]:
        """:meth:`gradients` (one part) and :meth:`shard_gradients` (several): forward, loss and backward once."""
        logits = self.forward_train(ws, n, masks)
        hits = logits.argmax(axis=1) == y[:n]
        parts = [(lo, hi) for lo, hi, _ in shards]
        losses = softmax_cross_entropy_parts(logits, y[:n], grad_scale, parts)
        self.backward(ws, n, logits, {}, masks, shards)
        return [(loss * (hi - lo), int(np.count_nonzero(hits[lo:hi]))) for loss, (lo, hi) in zip(losses, parts)]

    def predict_logits(self, x: np.ndarray, batch_size: int = 10_000) -> np.ndarray:
        """Logits ``(N, C)`` for ``x: (N, 784)``, in chunks to bound memory."""
        out = np.empty((x.shape[0], self.params[f"W{self.num_layers}"].shape[1]), dtype=self.dtype)
        for start in range(0, x.shape[0], batch_size):
            out[start : start + batch_size] = self.forward(x[start : start + batch_size])
        return out
