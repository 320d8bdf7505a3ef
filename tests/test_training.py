"""The training loop on small synthetic problems: learning, events, early stopping, divergence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mnist_np.nn.metrics import evaluate
from mnist_np.nn.model import MLP
from mnist_np.nn.optim import SGD
from mnist_np.nn.registry import ACTIVATIONS, INITIALIZERS
from mnist_np.nn.schedules import Schedule
from mnist_np.train.loop import TrainingDiverged, TrainSettings, fit
from mnist_np.train.sharded import ShardFailed
from mnist_np.train.stepper import can_shard, shard_count


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated Gaussian clusters in 784 dimensions: ``x (n, 784) float32``, ``y (n,)``."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(0, 1, size=(3, 784))
    y = rng.integers(0, 3, size=n)
    x = centers[y] + rng.normal(0, 1.0, size=(n, 784))
    return x.astype(np.float32), y


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_train_start(self, model, settings) -> None:
        self.events.append(("start",))

    def on_epoch_end(self, epoch, metrics, model, is_best) -> None:
        self.events.append(("epoch", epoch, is_best, sorted(metrics)))

    def on_train_end(self, result) -> None:
        self.events.append(("end", len(result.history)))


def train(epochs: int = 3, lr: float = 0.05, patience: int | None = None, n_val: int = 200, seed: int = 0,
          callbacks=()):
    x, y = blobs(1000, seed=1)
    xv, yv = blobs(n_val, seed=2)
    model = MLP.initialize([784, 16, 3], ACTIVATIONS["relu"](), INITIALIZERS["he"], np.random.default_rng(seed))
    settings = TrainSettings(epochs=epochs, batch_size=50, early_stopping_patience=patience)
    result = fit(model, SGD(momentum=0.9), Schedule("constant", lr, epochs), x, y, xv, yv, settings,
                 np.random.default_rng(seed + 1), np.random.default_rng(seed + 2), callbacks)
    return model, result, (xv, yv)


def test_fit_learns_and_reports_every_epoch() -> None:
    rec = Recorder()
    model, result, (xv, yv) = train(epochs=3, callbacks=[rec])
    assert len(result.history) == 3
    assert result.history[-1]["val_accuracy"] > 0.95
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert evaluate(model, xv, yv)[1] == result.history[-1]["val_accuracy"]
    keys = ["epoch_seconds", "lr", "samples_per_second", "train_accuracy", "train_loss", "val_accuracy", "val_loss"]
    assert rec.events[0] == ("start",) and rec.events[-1] == ("end", 3)
    assert [e[1] for e in rec.events[1:-1]] == [1, 2, 3] and all(e[3] == keys for e in rec.events[1:-1])


def test_best_params_are_a_copy_from_the_best_epoch() -> None:
    model, result, _ = train(epochs=3)
    best = result.history[result.best_epoch - 1]["val_loss"]
    assert best == min(h["val_loss"] for h in result.history)
    assert all(result.best_params[k] is not model.params[k] for k in model.params)


def test_early_stopping_stops_when_validation_stops_improving() -> None:
    # A learning rate this high makes validation loss bounce, so patience 1 triggers.
    _, result, _ = train(epochs=30, lr=0.5, patience=1)
    assert result.stopped_early and len(result.history) < 30
    assert len(result.history) - result.best_epoch == 1


def test_no_validation_split_makes_the_last_epoch_best() -> None:
    _, result, _ = train(epochs=2, n_val=0)
    assert result.best_epoch == 2 and np.isnan(result.history[0]["val_loss"])


def test_divergence_raises_with_epoch_and_batch() -> None:
    with pytest.raises(TrainingDiverged) as e:
        train(epochs=2, lr=1e8)
    assert e.value.epoch == 1 and e.value.batch >= 1
    assert f"epoch 1, batch {e.value.batch}" in str(e.value)


def test_training_is_deterministic_for_fixed_generators() -> None:
    a, _, _ = train(epochs=2)
    b, _, _ = train(epochs=2)
    c, _, _ = train(epochs=2, seed=5)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["W1"], c.params["W1"])


def train_threads(threads: int, n: int = 1001, batch_size: int = 100, lr: float = 0.05, dropout: float = 0.0,
                  model_seed: int = 0):
    """One epoch on blobs with ``threads`` shards per batch; ``n`` leaves a 1-row last batch."""
    x, y = blobs(n, seed=1)
    model = MLP.initialize([784, 16, 3], ACTIVATIONS["relu"](), INITIALIZERS["he"], np.random.default_rng(model_seed),
                           dropout=dropout)
    settings = TrainSettings(epochs=1, batch_size=batch_size, threads=threads)
    result = fit(model, SGD(momentum=0.9, nesterov=True, weight_decay=5e-4), Schedule("constant", lr, 1), x, y, x[:0],
                 y[:0], settings, np.random.default_rng(1), np.random.default_rng(2))
    return model, result


def no_children_left() -> bool:
    """True when this process has no child processes (running or unreaped)."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


needs_shards = pytest.mark.skipif(not can_shard(), reason="shards run as forked processes on x86-64 only")


def test_shard_count_follows_threads_and_batch_size() -> None:
    if not can_shard():
        assert shard_count(512, 8) == 1
        return
    assert shard_count(128, 2) == 2 and shard_count(512, 2) == 2 and shard_count(512, 8) == 8
    assert shard_count(32, 2) == 2 and shard_count(16, 2) == 1  # too few rows to pay for a second process
    assert shard_count(128, 1) == 1 and shard_count(1, 4) == 1


@needs_shards
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_sharded_steps_are_deterministic_and_agree_with_one_shard(dropout: float) -> None:
    a, ra = train_threads(2, dropout=dropout)
    b, rb = train_threads(2, dropout=dropout)
    one, r1 = train_threads(1, dropout=dropout)
    assert no_children_left()  # the workers are gone
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)  # same threads, same bits
    assert ra.history[0]["train_loss"] == rb.history[0]["train_loss"]
    # Two shards add their gradients in another order than one: equal up to rounding.
    assert all(np.allclose(a.params[k], one.params[k], rtol=1e-4, atol=1e-6) for k in a.params)
    assert ra.history[0]["train_accuracy"] == pytest.approx(r1.history[0]["train_accuracy"], abs=0.01)


def _raise_memory_error() -> None:
    raise MemoryError("shard 1 ran out")


@needs_shards
@pytest.mark.parametrize("fault, reported", [
    (_raise_memory_error, "shard 1 of 2: MemoryError: shard 1 ran out"),
    (lambda: os.kill(os.getpid(), signal.SIGKILL),
     "shard 1 of 2: its process ended unexpectedly \\(killed by SIGKILL\\)"),
], ids=["error", "sigkill"])
def test_a_worker_that_fails_or_dies_is_reported_by_the_caller(monkeypatch: pytest.MonkeyPatch, fault,
                                                               reported: str) -> None:
    parent, real = os.getpid(), MLP.gradients

    def failing(self, *args, **kwargs):
        if os.getpid() != parent:  # only in the forked worker
            fault()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MLP, "gradients", failing)
    with pytest.raises(ShardFailed, match=reported):
        train_threads(2)
    assert no_children_left()


@needs_shards
def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    """A trainer killed with SIGKILL must not leave its shard processes spinning."""
    script = tmp_path / "train_forever.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import numpy as np
        from test_training import blobs
        from mnist_np.nn.model import MLP
        from mnist_np.nn.optim import SGD
        from mnist_np.nn.schedules import Schedule
        from mnist_np.nn.registry import ACTIVATIONS, INITIALIZERS
        from mnist_np.train.loop import TrainSettings, fit
        x, y = blobs(2000, seed=1)
        model = MLP.initialize([784, 16, 3], ACTIVATIONS["relu"](), INITIALIZERS["he"], np.random.default_rng(0))
        fit(model, SGD(), Schedule("constant", 0.01, 10**6), x, y, x[:0], y[:0],
            TrainSettings(epochs=10**6, batch_size=100, threads=2), np.random.default_rng(1), np.random.default_rng(2))
    """))
    proc = subprocess.Popen([sys.executable, str(script)])
    try:
        children: list[int] = []
        deadline = time.monotonic() + 60
        while not children and time.monotonic() < deadline:
            time.sleep(0.2)
            children = [int(c) for t in Path(f"/proc/{proc.pid}/task").iterdir()
                        for c in (t / "children").read_text().split()]
        assert children, "the trainer never forked its shard worker"
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{c}").exists() and "zombie" not in Path(f"/proc/{c}/status").read_text() for c in children):
        assert time.monotonic() < deadline, f"shard workers {children} outlived their parent"
        time.sleep(0.1)


@needs_shards
def test_divergence_with_shards_stops_cleanly() -> None:
    with pytest.raises(TrainingDiverged):
        train_threads(2, lr=1e8)
    assert no_children_left()


def test_many_short_epochs_with_threads_stay_deterministic() -> None:
    """Every epoch ends in a sync of the worker threads; a race there would show as differing bits."""
    def run() -> MLP:
        x, y = blobs(200, seed=1)
        model = MLP.initialize([784, 16, 3], ACTIVATIONS["relu"](), INITIALIZERS["he"], np.random.default_rng(0),
                               dropout=0.2)
        fit(model, SGD(momentum=0.9), Schedule("constant", 0.05, 40), x, y, x[:50], y[:50],
            TrainSettings(epochs=40, batch_size=100, threads=2), np.random.default_rng(1), np.random.default_rng(2))
        return model

    first = run()
    for _ in range(3):
        again = run()
        assert all(np.array_equal(first.params[k], again.params[k]) for k in first.params)


@pytest.mark.parametrize("threads", [1, 2])
def test_uint8_pixels_train_exactly_like_their_floats(threads: int) -> None:
    """Pixels scaled batch by batch (a quarter of the bytes to gather) give the same bits as pre-scaled floats."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(600, 784), dtype=np.uint8)
    floats = np.divide(pixels, np.float32(255), dtype=np.float32)
    y = rng.integers(0, 10, size=600)

    def train(x: np.ndarray) -> MLP:
        model = MLP.initialize([784, 16, 10], ACTIVATIONS["relu"](), INITIALIZERS["he"], np.random.default_rng(1),
                               dropout=0.1)
        fit(model, SGD(momentum=0.9), Schedule("constant", 0.05, 2), x, y, floats[:50], y[:50],
            TrainSettings(epochs=2, batch_size=100, threads=threads), np.random.default_rng(2),
            np.random.default_rng(3))
        return model

    a, b = train(floats), train(pixels)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
