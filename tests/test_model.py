"""The network's shapes, its weights file and the weights hash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mnist_np.nn.model import MLP, param_names
from mnist_np.nn.registry import ACTIVATIONS, INITIALIZERS
from mnist_np.nn.weights import load_weights, save_weights, weights_sha256


def make(sizes=(784, 128, 10), dtype=np.float32, seed=0, init="he") -> MLP:
    return MLP.initialize(list(sizes), ACTIVATIONS["relu"](), INITIALIZERS[init], np.random.default_rng(seed),
                          dtype=dtype)


def test_shapes_dtype_and_names() -> None:
    model = make((784, 64, 32, 10))
    assert list(model.params) == ["W1", "b1", "W2", "b2", "W3", "b3"] == param_names(3)
    assert [model.params[f"W{i}"].shape for i in (1, 2, 3)] == [(784, 64), (64, 32), (32, 10)]
    assert all(p.dtype == np.float32 for p in model.params.values())
    assert model.sizes == [784, 64, 32, 10]
    x = np.zeros((5, 784), np.float32)
    assert model.forward(x).shape == (5, 10)
    assert model.predict_logits(np.ones((23, 784), np.float32), batch_size=10).shape == (23, 10)


def test_initialisers_have_the_documented_scale() -> None:
    he = make((784, 512, 10), init="he").params["W1"]
    assert he.std() == pytest.approx(np.sqrt(2 / 784), rel=0.02)
    xavier = make((784, 512, 10), init="xavier").params["W1"]
    assert np.abs(xavier).max() <= np.sqrt(6 / (784 + 512))
    normal = MLP.initialize([784, 512, 10], ACTIVATIONS["relu"](), INITIALIZERS["normal"], np.random.default_rng(0),
                            init_scale=0.01)
    assert normal.params["W1"].std() == pytest.approx(0.01, rel=0.02)
    assert not normal.params["b1"].any()


def test_chunked_prediction_equals_one_pass() -> None:
    model = make(dtype=np.float64)
    x = np.random.default_rng(1).random((100, 784))
    assert np.allclose(model.predict_logits(x, batch_size=7), model.forward(x))


def test_weights_file_round_trip_without_pickle(tmp_path: Path) -> None:
    model = make((784, 32, 32, 10))
    path = save_weights(tmp_path / "w" / "final.npz", model.params, "model:\n  hidden_size: 32\n")
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == sorted(["W1", "b1", "W2", "b2", "W3", "b3", "config"])
    params, config_yaml = load_weights(path)
    assert "hidden_size: 32" in config_yaml
    assert all(np.array_equal(params[k], model.params[k]) for k in model.params)
    assert weights_sha256(params) == weights_sha256(model.params)
    assert not list(tmp_path.glob("w/*.tmp"))  # the atomic write cleaned up


def test_weights_hash_sees_every_bit() -> None:
    a = make().params
    b = {k: v.copy() for k, v in a.items()}
    assert weights_sha256(a) == weights_sha256(b)
    b["b2"].view(np.uint32)[0] ^= 1  # flip the lowest bit of one float
    assert weights_sha256(a) != weights_sha256(b)
    assert weights_sha256(make(dtype=np.float64).params) != weights_sha256(a)


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    assert weights_sha256(make(seed=3).params) == weights_sha256(make(seed=3).params)
    assert weights_sha256(make(seed=3).params) != weights_sha256(make(seed=4).params)
