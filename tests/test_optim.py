"""Optimizer steps and learning-rate schedules against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mnist_np.nn.optim import SGD, Adam, Optimizer
from mnist_np.nn.schedules import Schedule


def params(value: float = 1.0) -> dict[str, np.ndarray]:
    return {"W1": np.array([value]), "b1": np.array([value])}


def step(opt, p: dict[str, np.ndarray], *shard_grads: float, lr: float) -> None:
    """One step of ``opt`` on ``p`` with the given gradient value in each shard (attaching on first use)."""
    if opt.state is None:
        opt.attach(p, shards=len(shard_grads))
    for g, value in zip(opt.grads, shard_grads):
        for arr in g.values():
            arr[...] = value
    opt.step(lr)


def test_plain_sgd() -> None:
    p = params()
    step(SGD(), p, 0.5, lr=0.1)
    assert p["W1"][0] == pytest.approx(0.95)


def test_sgd_momentum_two_steps() -> None:
    p, opt = params(), SGD(momentum=0.9)
    step(opt, p, 0.5, lr=0.1)  # v = 0.5, w = 1 - 0.05
    step(opt, p, 0.5, lr=0.1)  # v = 0.9 * 0.5 + 0.5 = 0.95, w = 0.95 - 0.095
    assert p["W1"][0] == pytest.approx(0.855)
    assert opt.state_dict()["velocity/W1"][0] == pytest.approx(0.95)


def test_sgd_nesterov() -> None:
    p = params()
    step(SGD(momentum=0.9, nesterov=True), p, 0.5, lr=0.1)  # v = 0.5; w -= 0.1 * (0.5 + 0.9 * 0.5)
    assert p["W1"][0] == pytest.approx(0.905)


def test_nesterov_second_step_matches_the_textbook_update() -> None:
    lr, mu, wd = 0.1, 0.9, 0.01
    p, opt = params(), SGD(momentum=mu, nesterov=True, weight_decay=wd)
    w, v = 1.0, 0.0
    for g in (0.5, -0.3, 0.2):
        step(opt, p, g, lr=lr)
        gt = g + wd * w
        v = mu * v + gt
        w -= lr * (gt + mu * v)
        assert p["W1"][0] == pytest.approx(w, rel=1e-12)
        assert opt.state_dict()["velocity/W1"][0] == pytest.approx(v, rel=1e-12)


def test_sgd_weight_decay_touches_weights_not_biases() -> None:
    p = params()
    step(SGD(weight_decay=0.1), p, 0.5, lr=0.1)  # g = 0.5 + 0.1 * 1 for W only
    assert p["W1"][0] == pytest.approx(0.94)
    assert p["b1"][0] == pytest.approx(0.95)


@pytest.mark.parametrize("make",
                         [lambda: SGD(momentum=0.9, nesterov=True, weight_decay=0.01), lambda: Adam(weight_decay=0.01)])
def test_shards_gradients_add_up(make) -> None:
    """Three shards holding 0.2, 0.1 and 0.2 step exactly like one shard holding 0.5."""
    one, three = params(), params()
    a, b = make(), make()
    for _ in range(3):
        step(a, one, 0.5, lr=0.1)
        step(b, three, 0.25, 0.125, 0.125, lr=0.1)  # binary fractions: the sums are exact
    assert one["W1"][0] == pytest.approx(three["W1"][0], rel=1e-12)
    assert one["b1"][0] == pytest.approx(three["b1"][0], rel=1e-12)


def test_update_in_parts_equals_one_pass() -> None:
    rng = np.random.default_rng(0)
    p1 = {"W1": rng.normal(size=(300, 40)), "b1": rng.normal(size=40), "W2": rng.normal(size=(40, 7)),
          "b2": rng.normal(size=7)}
    p2 = {k: v.copy() for k, v in p1.items()}
    g = {k: rng.normal(size=v.shape) for k, v in p1.items()}
    whole, parts = SGD(momentum=0.9, weight_decay=0.01), SGD(momentum=0.9, weight_decay=0.01)
    (g1,) = whole.attach(p1)
    (g2,) = parts.attach(p2, parts=3)
    for _ in range(2):
        for grads in (g1, g2):
            for k in grads:
                grads[k][...] = g[k]
        whole.step(0.1)
        plan = parts.plan(0.1)
        parts.swap_buffers()
        for part in (2, 0, 1):  # any order: parts are disjoint columns
            parts.update(plan, part)
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)


def test_attach_moves_params_into_the_optimizer_and_keeps_values() -> None:
    p = params(3.0)
    before = p["W1"]
    opt = SGD(momentum=0.9)
    opt.attach(p)
    assert p["W1"] is not before and p["W1"][0] == 3.0
    assert opt.state is not None and np.shares_memory(p["W1"], opt.state)


def test_nesterov_without_momentum_is_refused() -> None:
    with pytest.raises(ValueError, match="momentum"):
        SGD(nesterov=True)


def test_adam_matches_textbook_formula() -> None:
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    p, opt = params(), Adam(betas=(b1, b2), eps=eps)
    w, m, v = 1.0, 0.0, 0.0
    for t, g in enumerate([0.5, -0.2, 0.3], start=1):
        step(opt, p, g, lr=lr)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w -= lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
        assert p["W1"][0] == pytest.approx(w, rel=1e-9)
    assert int(opt.state_dict()["t"]) == 3


def test_first_adam_step_moves_by_lr() -> None:
    p = params()
    step(Adam(), p, 0.5, lr=0.1)  # m_hat / sqrt(v_hat) = 1
    assert p["W1"][0] == pytest.approx(0.9, rel=1e-6)


def test_adam_l2_vs_adamw_decoupled_decay() -> None:
    coupled, decoupled = params(), params()
    step(Adam(weight_decay=0.1), coupled, 0.5, lr=0.1)
    step(Adam(weight_decay=0.1, decoupled=True), decoupled, 0.5, lr=0.1)
    # L2: the decay enters the gradient and is normalised away on the first step.
    assert coupled["W1"][0] == pytest.approx(0.9, rel=1e-6)
    # AdamW: w * (1 - lr * wd) then the Adam step.
    assert decoupled["W1"][0] == pytest.approx(0.99 - 0.1, rel=1e-6)
    assert decoupled["b1"][0] == pytest.approx(0.9, rel=1e-6)


@pytest.mark.parametrize("make", [lambda: Adam(), lambda: SGD(momentum=0.9)])
def test_state_round_trip(make) -> None:
    p1, a = params(), make()
    step(a, p1, 0.5, lr=0.1)
    b = make()
    b.load_state_dict({k: v.copy() for k, v in a.state_dict().items()})  # before attach: kept until then
    p2 = {k: v.copy() for k, v in p1.items()}
    step(a, p1, 0.2, lr=0.1)
    step(b, p2, 0.2, lr=0.1)
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


SKIPPABLE = [SGD, lambda: SGD(momentum=0.9), lambda: SGD(momentum=0.9, nesterov=True), Adam,
             lambda: Adam(decoupled=True)]


@pytest.mark.parametrize("make", SKIPPABLE)
def test_skip_does_what_plans_and_swaps_do(make) -> None:
    """A shard worker's copy that sat out steps catches up with ``skip``: same block, same counters, same next plan."""
    assert {type(m()) for m in SKIPPABLE} == set(Optimizer.__subclasses__())  # a new optimizer is tested here too
    rng = np.random.default_rng(0)
    initial = {"W1": rng.normal(size=(5, 3)), "b1": rng.normal(size=3)}
    stepped, skipped = make(), make()
    stepped.attach({k: v.copy() for k, v in initial.items()}, shards=2, parts=2)
    skipped.attach({k: v.copy() for k, v in initial.items()}, shards=2, parts=2)
    for steps in (1, 2, 5):
        for i in range(steps):
            stepped.plan(0.1 * (i + 1))
            stepped.swap_buffers()
        skipped.skip(steps)
        assert skipped._block == stepped._block
        assert ({k: int(v) for k, v in skipped._scalar_state().items()}
                == {k: int(v) for k, v in stepped._scalar_state().items()})
        assert repr(skipped.plan(0.1)) == repr(stepped.plan(0.1))
        assert (skipped.params["W1"].base is not None
                and np.shares_memory(skipped.params["W1"], skipped.state[skipped._block]))
