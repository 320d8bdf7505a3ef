"""Optimizer steps and learning-rate schedules against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mnist_np.optim import SGD, Adam, Schedule


def params(value: float = 1.0) -> dict[str, np.ndarray]:
    return {"W1": np.array([value]), "b1": np.array([value])}


def grads(value: float = 0.5) -> dict[str, np.ndarray]:
    return {"W1": np.array([value]), "b1": np.array([value])}


def test_plain_sgd() -> None:
    p = params()
    SGD().step(p, grads(), lr=0.1)
    assert p["W1"][0] == pytest.approx(0.95)


def test_sgd_momentum_two_steps() -> None:
    p, opt = params(), SGD(momentum=0.9)
    opt.step(p, grads(), lr=0.1)  # v = 0.5, w = 1 - 0.05
    opt.step(p, grads(), lr=0.1)  # v = 0.9 * 0.5 + 0.5 = 0.95, w = 0.95 - 0.095
    assert p["W1"][0] == pytest.approx(0.855)
    assert opt.state_dict()["velocity/W1"][0] == pytest.approx(0.95)


def test_sgd_nesterov() -> None:
    p = params()
    SGD(momentum=0.9, nesterov=True).step(p, grads(), lr=0.1)  # v = 0.5; w -= 0.1 * (0.5 + 0.9 * 0.5)
    assert p["W1"][0] == pytest.approx(0.905)


def test_sgd_weight_decay_touches_weights_not_biases() -> None:
    p = params()
    SGD(weight_decay=0.1).step(p, grads(), lr=0.1)  # g = 0.5 + 0.1 * 1 for W only
    assert p["W1"][0] == pytest.approx(0.94)
    assert p["b1"][0] == pytest.approx(0.95)


def test_nesterov_without_momentum_is_refused() -> None:
    with pytest.raises(ValueError, match="momentum"):
        SGD(nesterov=True)


def test_adam_matches_textbook_formula() -> None:
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    p, opt = params(), Adam(betas=(b1, b2), eps=eps)
    w, m, v = 1.0, 0.0, 0.0
    for t, g in enumerate([0.5, -0.2, 0.3], start=1):
        opt.step(p, grads(g), lr=lr)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w -= lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
        assert p["W1"][0] == pytest.approx(w, rel=1e-9)
    assert int(opt.state_dict()["t"]) == 3


def test_first_adam_step_moves_by_lr() -> None:
    p = params()
    Adam().step(p, grads(0.5), lr=0.1)  # m_hat / sqrt(v_hat) = 1
    assert p["W1"][0] == pytest.approx(0.9, rel=1e-6)


def test_adam_l2_vs_adamw_decoupled_decay() -> None:
    coupled, decoupled = params(), params()
    Adam(weight_decay=0.1).step(coupled, grads(0.5), lr=0.1)
    Adam(weight_decay=0.1, decoupled=True).step(decoupled, grads(0.5), lr=0.1)
    # L2: the decay enters the gradient and is normalised away on the first step.
    assert coupled["W1"][0] == pytest.approx(0.9, rel=1e-6)
    # AdamW: w * (1 - lr * wd) then the Adam step.
    assert decoupled["W1"][0] == pytest.approx(0.99 - 0.1, rel=1e-6)
    assert decoupled["b1"][0] == pytest.approx(0.9, rel=1e-6)


def test_adam_state_round_trip() -> None:
    p1, a = params(), Adam()
    a.step(p1, grads(0.5), lr=0.1)
    b = Adam()
    b.load_state_dict({k: v.copy() for k, v in a.state_dict().items()})
    p2 = {k: v.copy() for k, v in p1.items()}
    a.step(p1, grads(0.2), lr=0.1)
    b.step(p2, grads(0.2), lr=0.1)
    assert np.array_equal(p1["W1"], p2["W1"])


def test_constant_and_step_schedules() -> None:
    const = Schedule("constant", base_lr=0.1, total_epochs=10)
    assert const.lr_at_step(9, 99, 100) == 0.1
    step = Schedule("step", base_lr=0.1, total_epochs=30, step_size=10, gamma=0.5)
    assert step.lr_at_step(9, 99, 100) == pytest.approx(0.1)
    assert step.lr_at_step(10, 0, 100) == pytest.approx(0.05)
    assert step.lr_at_step(25, 0, 100) == pytest.approx(0.025)


def test_cosine_schedule() -> None:
    s = Schedule("cosine", base_lr=0.1, total_epochs=10, min_lr=0.001)
    assert s.lr_at_step(0, 0, 100) == pytest.approx(0.1)
    assert s.lr_at_step(5, 0, 100) == pytest.approx(0.001 + 0.099 * 0.5)  # half-way: cos(pi/2) = 0
    assert s.base(10) == pytest.approx(0.001)


def test_linear_warmup() -> None:
    s = Schedule("cosine", base_lr=0.1, total_epochs=10, warmup_epochs=2)
    assert s.lr_at_step(0, 0, 100) == pytest.approx(0.1 / 200)  # step 1 of 200
    assert s.lr_at_step(1, 0, 100) == pytest.approx(0.1 * 101 / 200)
    assert s.lr_at_step(2, 0, 100) == pytest.approx(0.1)  # warm-up over, cosine starts at the top
    assert s.lr_at_step(9, 99, 100) < 0.01
