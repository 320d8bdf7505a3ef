"""Backpropagation checked against central finite differences in float64."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_np.nn.dropout import dropout_mask
from mnist_np.nn.losses import cross_entropy, softmax_cross_entropy
from mnist_np.nn.model import MLP
from mnist_np.nn.registry import ACTIVATIONS, INITIALIZERS

EPS = 1e-6
TOL = 1e-6


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-12))


def numeric_grad(f, x: np.ndarray) -> np.ndarray:
    """d f / d x by central differences, perturbing ``x`` in place."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + EPS
        plus = f()
        x[i] = old - EPS
        minus = f()
        x[i] = old
        grad[i] = (plus - minus) / (2 * EPS)
    return grad


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_gradient(name: str) -> None:
    rng = np.random.default_rng(0)
    act = ACTIVATIONS[name](negative_slope=0.1)
    z = rng.normal(size=(4, 5))
    z[np.abs(z) < 1e-3] = 0.5  # keep clear of ReLU's kink, where no derivative exists
    upstream = rng.normal(size=z.shape)

    a = act.forward(z.copy())
    analytic = act.backward(upstream.copy(), a)
    numeric = numeric_grad(lambda: float(np.sum(act.forward(z.copy()) * upstream)), z)
    assert rel_error(analytic, numeric) < TOL


def test_fused_loss_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 10)) * 3
    labels = rng.integers(0, 10, size=6)
    loss, grad = softmax_cross_entropy(logits.copy(), labels)
    assert loss == pytest.approx(cross_entropy(logits, labels), rel=1e-12)
    numeric = numeric_grad(lambda: cross_entropy(logits, labels), logits)
    assert rel_error(grad, numeric) < TOL


def test_fused_loss_is_stable_for_huge_logits() -> None:
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], dtype=np.float32)
    loss, grad = softmax_cross_entropy(logits.copy(), np.array([1, 1]))
    # Row 0 is confidently wrong by 2e4 nats; row 1 is right: mean 1e4.
    assert np.isfinite(loss) and loss == pytest.approx(1e4, rel=1e-6)
    assert np.all(np.isfinite(grad))
    assert np.allclose(grad.sum(axis=1), 0, atol=1e-6)


def masked_forward(model: MLP, x: np.ndarray, masks: list[np.ndarray] | None) -> np.ndarray:
    """The oracle: ``act(a @ W + b) * mask`` layer by layer, written out independently of the model."""
    a = x
    for i in range(1, model.num_layers):
        a = model.activation.forward(a @ model.params[f"W{i}"] + model.params[f"b{i}"])
        if masks is not None:
            a = a * masks[i - 1]
    return a @ model.params[f"W{model.num_layers}"] + model.params[f"b{model.num_layers}"]


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_two_hidden_layer_mlp_gradient(activation: str, dropout: float) -> None:
    rng = np.random.default_rng(2)
    model = MLP.initialize(
        [7, 6, 5, 4], ACTIVATIONS[activation](negative_slope=0.1), INITIALIZERS["xavier"], rng, dropout=dropout,
        dtype=np.float64
    )
    x = rng.normal(size=(5, 7))
    y = rng.integers(0, 4, size=5)
    masks = [dropout_mask(np.random.default_rng(7), np.empty((5, h)), dropout) for h in (6, 5)] if dropout else None

    ws = model.workspace(8)
    ws.x[:5] = x
    grads = {k: np.full_like(v, np.nan) for k, v in model.params.items()}  # every entry must be written
    loss_sum, correct = model.gradients(ws, 5, y, grads, 1 / 5, masks)
    logits = masked_forward(model, x, masks)
    assert loss_sum / 5 == pytest.approx(cross_entropy(logits, y), rel=1e-12)
    assert correct == int(np.sum(logits.argmax(axis=1) == y))
    assert set(grads) == {"W1", "b1", "W2", "b2", "W3", "b3"}
    for name, param in model.params.items():
        numeric = numeric_grad(lambda: cross_entropy(masked_forward(model, x, masks), y), param)
        assert rel_error(grads[name], numeric) < TOL, name


def test_shard_gradients_add_up_to_the_batch_gradient() -> None:
    rng = np.random.default_rng(4)
    model = MLP.initialize([7, 6, 4], ACTIVATIONS["tanh"](), INITIALIZERS["he"], rng, dtype=np.float64)
    x, y = rng.normal(size=(9, 7)), rng.integers(0, 4, size=9)
    ws = model.workspace(9)

    def grads_of(rows: slice) -> dict[str, np.ndarray]:
        g = {k: np.empty_like(v) for k, v in model.params.items()}
        n = len(y[rows])
        ws.x[:n] = x[rows]
        model.gradients(ws, n, y[rows], g, 1 / 9)
        return g

    whole, first, rest = grads_of(slice(0, 9)), grads_of(slice(0, 4)), grads_of(slice(4, 9))
    assert all(np.allclose(whole[k], first[k] + rest[k], rtol=1e-12, atol=1e-15) for k in whole)


def test_dropout_masks_are_inverted_and_evaluation_has_none() -> None:
    rng = np.random.default_rng(3)
    model = MLP.initialize([20, 400, 3], ACTIVATIONS["relu"](), INITIALIZERS["he"], rng, dropout=0.5, dtype=np.float64)
    x = rng.normal(size=(50, 20))
    assert np.array_equal(model.forward(x), model.forward(x))  # deterministic: no dropout at evaluation
    mask = dropout_mask(np.random.default_rng(0), np.empty((50, 400)), 0.5)
    assert set(np.unique(mask)) == {0.0, 2.0}  # inverted dropout: kept units x 1/(1-p)
    assert abs((mask == 0).mean() - 0.5) < 0.02
    ws = model.workspace(50)
    ws.x[:] = x
    model.gradients(ws, 50, rng.integers(0, 3, 50), {k: np.empty_like(v) for k, v in model.params.items()}, 1 / 50,
                    [mask])
    hidden = np.maximum(x @ model.params["W1"] + model.params["b1"], 0)
    assert np.allclose(ws.h[0], hidden)  # the activation before the mask, as the backward pass needs it
    assert np.allclose(ws.a[0], hidden * mask)
