"""The MLflow pyfunc model of a trained network ("models from code").

MLflow copies this file into the logged model and executes it when the model
is loaded; the last line tells MLflow which object is the model. The file is
deliberately self-contained -- NumPy, pandas, PyYAML and MLflow only, never
``mnist_np`` -- so a served model does not depend on this repository being
installed. The forward pass is therefore written out again here (the same
arithmetic as ``mnist_np.nn.model.MLP``; the tests compare the two).

Input: ``(N, 784)`` float32 pixels in [0, 1], as a NumPy array or a pandas
DataFrame with 784 columns (MNIST layout, 28x28 row by row, digit bright on
black; ``mnist_np.preprocess.preprocess_image`` makes that from a photo).
Output: a DataFrame with one row per image: ``label`` (int), ``probability``
(of that label) and ``p0`` ... ``p9``.
"""

from __future__ import annotations

from typing import Any, Callable

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow.pyfunc import PythonModel, PythonModelContext

WEIGHTS_ARTIFACT = "weights"  # key of the .npz in the model's artifacts
CONFIG_KEY = "config"  # the resolved config text inside a weights file


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # 0.5 * (1 + tanh(z / 2)): the logistic function without exp overflow.
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _activation(config: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    """The hidden-layer nonlinearity the training config names (``relu`` when it names none)."""
    model = config.get("model") or {}
    name = str(model.get("activation") or "relu")
    slope = float(model.get("negative_slope") if model.get("negative_slope") is not None else 0.01)
    table: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "relu": lambda z: np.maximum(z, 0),
        "leaky_relu": lambda z: np.where(z > 0, z, z * z.dtype.type(slope)),
        "tanh": np.tanh,
        "sigmoid": lambda z: _sigmoid(z).astype(z.dtype, copy=False),
    }
    if name not in table:
        raise ValueError(f"model.activation={name!r} is not known; allowed: {', '.join(sorted(table))}")
    return table[name]


class MnistNpModel(PythonModel):
    """A NumPy MLP (``W1, b1, ..., WL, bL`` from a weights ``.npz``) behind MLflow's pyfunc interface."""

    def __init__(self) -> None:
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []
        self.act: Callable[[np.ndarray], np.ndarray] = lambda z: np.maximum(z, 0)

    def load_context(self, context: PythonModelContext) -> None:
        """Read the weights file named by ``context.artifacts["weights"]``.

        ``allow_pickle=False``: a weights file holds plain arrays and text only,
        so loading a model can never run code stored in it.
        """
        with np.load(context.artifacts[WEIGHTS_ARTIFACT], allow_pickle=False) as f:
            names = [k for k in f.files if k != CONFIG_KEY]
            n = len(names) // 2
            expected = [f"{kind}{i}" for i in range(1, n + 1) for kind in ("W", "b")]
            if n == 0 or sorted(names) != sorted(expected):
                raise ValueError(f"weights file: expected arrays {expected}, found {sorted(names)}")
            self.layers = [(f[f"W{i}"], f[f"b{i}"]) for i in range(1, n + 1)]
            config_text = str(f[CONFIG_KEY]) if CONFIG_KEY in f.files else ""
        config = yaml.safe_load(config_text) if config_text.strip() else {}
        self.act = _activation(config if isinstance(config, dict) else {})

    def _logits(self, x: np.ndarray) -> np.ndarray:
        """``x: (N, 784)`` -> logits ``(N, C)``, computed in the weights' dtype as in training."""
        a = np.asarray(x, dtype=self.layers[0][0].dtype)
        for i, (w, b) in enumerate(self.layers):
            a = a @ w + b
            if i < len(self.layers) - 1:
                a = self.act(a)
        return a

    # The hint is np.ndarray alone on purpose: MLflow reads it, and a union (or
    # Any) makes it warn at import. With the model's tensor signature MLflow
    # converts a DataFrame to an array before calling predict anyway; the
    # DataFrame branch below serves direct calls.
    def predict(self, context: PythonModelContext, model_input: np.ndarray,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """``model_input``: ``(N, 784)`` array (or DataFrame) -> DataFrame ``label, probability, p0..p9``."""
        x = model_input.to_numpy() if isinstance(model_input, pd.DataFrame) else np.asarray(model_input)
        width = self.layers[0][0].shape[0]
        if x.ndim == 1 and x.size == width:  # one image given as a flat vector
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"expected input of shape (N, {width}), got {x.shape}")
        logits = self._logits(x)
        # Stable softmax: subtract each row's maximum before exp.
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        proba = e / e.sum(axis=1, keepdims=True)
        label = logits.argmax(axis=1)
        out = pd.DataFrame({
            "label": label.astype(np.int64),
            "probability": proba[np.arange(len(label)), label].astype(np.float64),
        })
        for c in range(proba.shape[1]):
            out[f"p{c}"] = proba[:, c].astype(np.float64)
        return out


mlflow.models.set_model(MnistNpModel())
