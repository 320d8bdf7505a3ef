"""Augmentation (``augment=shift|affine|elastic``): what the transforms do to pixels, their randomness,
the background preparation, and runs: ``none`` bit-identical to no augmentation, an augmented run learns,
a resumed augmented run equals an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import small_overrides
from mnist_np import data
from mnist_np.data.augment import AUGMENTATIONS, Affine, Elastic, Shift, gaussian_matrix
from mnist_np.experiment.config.builders import (
    build_augmentation,
    build_model,
    build_optimizer,
    build_schedule,
    load_splits,
    rng_streams,
)
from mnist_np.experiment.config.compose import compose
from mnist_np.experiment.run.single import run
from mnist_np.nn.model import MLP
from mnist_np.nn.optim import SGD
from mnist_np.nn.registry import ACTIVATIONS, INITIALIZERS
from mnist_np.nn.schedules import Schedule
from mnist_np.nn.weights import weights_sha256
from mnist_np.train.augmented import CHUNK, AugmentationFailed, AugmentedEpochs, EpochJob
from mnist_np.train.checkpoint import Checkpointer, latest_checkpoint, load_state, restore_rngs
from mnist_np.train.loop import FitResult, TrainSettings, fit

DEFAULTS = {name: build_augmentation(compose([f"augment={name}"])) for name in AUGMENTATIONS}


def digits(n: int, seed: int = 0, spread: float = 5.0) -> np.ndarray:
    """``(n, 784) uint8`` digit-like images: a bright blob of random size on black, up to ``spread`` px off centre."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:28, 0:28]
    cy, cx = 13.5 + rng.uniform(-spread, spread, size=(2, n, 1, 1))
    ry, rx = rng.uniform(3, 7, size=(2, n, 1, 1))
    blob = np.exp(-(((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2))
    return np.rint(255 * blob * rng.uniform(0.5, 1, size=(n, 1, 1))).astype(np.uint8).reshape(n, 784)


def apply(transform, images: np.ndarray, seed: int = 0) -> np.ndarray:
    out = np.empty_like(images)
    transform(images, np.random.default_rng(seed), out)
    return out


# --- the transforms ---------------------------------------------------------------


@pytest.mark.parametrize("transform", [Shift(0), Affine(0, 0, 0, 0), Elastic(0, 4)], ids=repr)
def test_zero_strength_is_the_identity(transform) -> None:
    images = digits(300)
    assert np.array_equal(apply(transform, images), images)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_transforms_keep_shape_type_and_value_range(name: str) -> None:
    """Bilinear samples are convex combinations of pixels and black: no image gets brighter than it was."""
    images = digits(500)
    out = apply(DEFAULTS[name], images)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.all(out.max(axis=1) <= images.max(axis=1))
    assert np.mean(np.any(out != images, axis=1)) > 0.5  # it does something to most images
    # The ink stays: the distortions move it, they do not erase it (default strengths).
    kept = out.sum(axis=1, dtype=np.float64) / images.sum(axis=1, dtype=np.float64)
    assert np.median(kept) > 0.9, np.median(kept)


def test_a_shift_moves_each_image_by_whole_pixels_within_its_bound() -> None:
    images = digits(200)
    out = apply(Shift(3), images).reshape(-1, 28, 28)
    padded = np.pad(images.reshape(-1, 28, 28), ((0, 0), (3, 3), (3, 3)))
    found = set()
    for k in range(len(images)):
        moves = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)
                 if np.array_equal(out[k], padded[k, 3 + dy : 31 + dy, 3 + dx : 31 + dx])]
        assert moves, f"image {k} is not a whole-pixel shift of at most 3"
        found.add(moves[0])
    assert len(found) > 20  # the shifts are drawn, not fixed


def test_affine_keeps_the_digit_near_its_place() -> None:
    """Rotation, scale and shear turn about the centre: a centred digit's centre of mass stays where it was."""
    images = digits(300, spread=0)
    rows = np.repeat(np.arange(28), 28)

    def centre(x: np.ndarray) -> np.ndarray:
        return (x * rows).sum(axis=1) / x.sum(axis=1)

    moved = np.abs(centre(apply(Affine(30, 0.2, 10, 0), images)) - centre(images))
    assert np.percentile(moved, 95) < 1.5, np.percentile(moved, 95)


def test_elastic_fields_have_the_statistics_of_smoothed_uniform_noise() -> None:
    """The low-rank draw (see Elastic) against Simard's recipe itself: uniform noise, smoothed, times alpha."""
    n, alpha, sigma = 4000, 34.0, 4.0
    dy, dx = Elastic(alpha, sigma).fields(n, np.random.default_rng(0))
    g = gaussian_matrix(sigma)
    noise = np.random.default_rng(1).uniform(-1, 1, size=(n, 28, 28))
    reference = (alpha * g @ noise @ g.T).reshape(n, 784)
    for ours in (dy, dx):
        ratio = ours.std(axis=0) / reference.std(axis=0)
        assert abs(np.median(ratio) - 1) < 0.03 and np.all(np.abs(ratio - 1) < 0.1), ratio
        # Smoothness: how a pixel's displacement goes with its neighbours' (row 14, columns 14 and 14 + k).
        for k in (1, 4, 8):
            a, b = 14 * 28 + 14, 14 * 28 + 14 + k
            ours_corr = np.corrcoef(ours[:, a], ours[:, b])[0, 1]
            ref_corr = np.corrcoef(reference[:, a], reference[:, b])[0, 1]
            assert abs(ours_corr - ref_corr) < 0.05, (k, ours_corr, ref_corr)
    assert np.abs(np.corrcoef(dy[:, 400], dx[:, 400])[0, 1]) < 0.05  # two independent fields


# --- randomness and the background preparation -----------------------------------------------


def prepared(pixels: np.ndarray, name: str, stream: np.random.Generator, epoch: int) -> np.ndarray:
    """Epoch ``epoch``'s images made by this process alone."""
    out = np.empty_like(pixels)
    EpochJob(pixels, DEFAULTS[name], stream, epoch, out).run()
    return out


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_a_fixed_seed_gives_the_same_augmented_images(name: str) -> None:
    images = digits(3 * CHUNK + 7)  # several chunks and a short one
    stream = rng_streams(5)["augment"]
    before = stream.bit_generator.state
    first = [prepared(images, name, stream, epoch) for epoch in range(2)]
    assert np.array_equal(first[0], prepared(images, name, rng_streams(5)["augment"], 0))
    assert not np.array_equal(first[0], first[1])  # every epoch draws anew
    assert not np.array_equal(first[0], prepared(images, name, rng_streams(6)["augment"], 0))  # and every seed
    assert stream.bit_generator.state == before  # the stream itself never moves (so a checkpoint restores it as is)


def test_epochs_prepared_by_two_processes_equal_those_made_by_one() -> None:
    pixels = digits(40 * CHUNK)
    original = pixels.copy()
    stream = np.random.default_rng(3)
    with AugmentedEpochs(pixels, DEFAULTS["elastic"], stream, epochs=4) as epochs:
        for epoch in range(4):
            if epoch >= 2:
                time.sleep(0.3 * (epoch - 2))  # the worker ahead: none of it done, then most or all of it
            epochs.load(epoch)
            assert np.array_equal(epochs.images, prepared(pixels, "elastic", stream, epoch)), epoch
        epochs.load(1)  # out of order (a fit never does it): the epoch under way is stopped first
        assert np.array_equal(epochs.images, prepared(pixels, "elastic", stream, 1))
    assert np.array_equal(pixels, original)  # the source pixels are never written
    with pytest.raises(ValueError, match="uint8"):
        AugmentedEpochs(pixels.astype(np.float32), DEFAULTS["shift"], stream, epochs=1)


def test_where_processes_are_not_forked_the_training_process_makes_each_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    import mnist_np.train.augmented as augmented

    monkeypatch.setattr(augmented, "can_shard", lambda: False)  # as on macOS or Windows
    pixels, stream = digits(5 * CHUNK), np.random.default_rng(4)
    with AugmentedEpochs(pixels, DEFAULTS["affine"], stream, epochs=2) as epochs:
        assert epochs._worker is None
        for epoch in range(2):
            epochs.load(epoch)
            assert np.array_equal(epochs.images, prepared(pixels, "affine", stream, epoch)), epoch


def test_both_processes_take_chunks_of_one_epoch() -> None:
    """Who made which chunk, seen through a transform that marks its images with its process."""
    me = os.getpid()

    def mark(images, rng, out):
        time.sleep(0.002)  # slow enough that neither process runs through all the chunks alone
        out[:] = 1 if os.getpid() == me else 2

    with AugmentedEpochs(digits(100 * CHUNK), mark, np.random.default_rng(0), epochs=1) as epochs:
        epochs.load(0)
        marks = set(np.unique(epochs.images[:, 0]))
    assert marks == {1, 2}, marks


def test_a_transform_that_fails_in_the_worker_fails_the_load() -> None:
    me = os.getpid()
    made: dict[str, AugmentedEpochs] = {}

    def fails_in_the_worker(images, rng, out):
        if os.getpid() != me:
            raise RuntimeError("no pixels today")
        # The training process waits here until the worker has reported: the worker's chunk surely fails first,
        # however the two processes are scheduled (no sleep that a nice-19 worker may or may not beat).
        deadline = time.monotonic() + 60
        while made["epochs"]._reports.message(0) is None and time.monotonic() < deadline:
            time.sleep(0.005)
        out[:] = images

    with AugmentedEpochs(digits(4 * CHUNK), fails_in_the_worker, np.random.default_rng(0), epochs=3) as epochs:
        made["epochs"] = epochs
        with pytest.raises(AugmentationFailed, match="augmentation worker: RuntimeError: no pixels today"):
            epochs.load(0)


def test_a_worker_that_dies_fails_the_load_instead_of_hanging_it(tmp_path: Path) -> None:
    me = os.getpid()
    died = tmp_path / "died"

    def dies_in_the_worker(images, rng, out):
        if os.getpid() != me:
            died.touch()
            os._exit(3)
        # The training process waits for the worker to be on its way out: the worker surely dies mid-epoch,
        # however a loaded machine schedules a nice-19 process (no sleep it may or may not beat).
        deadline = time.monotonic() + 60
        while not died.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        out[:] = images

    with AugmentedEpochs(digits(4 * CHUNK), dies_in_the_worker, np.random.default_rng(0), epochs=2) as epochs:
        with pytest.raises(AugmentationFailed, match=r"ended unexpectedly \(exit status 3\)"):
            epochs.load(0)


ORPHANED = """
import os, signal, sys, time
import numpy as np
from mnist_np.data.augment import Shift
from mnist_np.train.augmented import AugmentedEpochs
pixels = np.zeros((1024, 784), dtype=np.uint8)
with AugmentedEpochs(pixels, Shift(2), np.random.default_rng(0), epochs=3) as epochs:
    epochs.load(0)
    sleeper = os.fork()
    if sleeper == 0:  # a child forked later holds the worker's pipe open: only the worker's own check can end it
        time.sleep(20)
        os._exit(0)
    print(epochs._worker, sleeper, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, left unreaped by whoever adopted it, does not)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_worker_ends_when_the_training_process_is_killed() -> None:
    # Not run(): the worker and the sleeper inherit the output pipe, and run() would wait for them to close it.
    proc = subprocess.Popen([sys.executable, "-c", ORPHANED], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert proc.wait(timeout=60) == -signal.SIGKILL and len(line.split()) == 2, line
    worker, sleeper = map(int, line.split())
    try:
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the augmentation worker outlived its training process"
    finally:
        for pid in (sleeper, worker):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_first_three_streams_are_those_of_runs_before_augmentation() -> None:
    """The augment stream is spawned last, so init, shuffle and dropout draw what they always drew."""
    before = [np.random.default_rng(s) for s in np.random.SeedSequence(7).spawn(3)]
    streams = rng_streams(7)
    for name, old in zip(("init", "shuffle", "dropout"), before):
        assert streams[name].bit_generator.state == old.bit_generator.state


def test_a_checkpoint_without_the_augment_stream_restores() -> None:
    rngs = rng_streams(0)
    fresh = rngs["augment"].bit_generator.state
    saved = {k: g.bit_generator.state for k, g in rng_streams(1).items() if k != "augment"}
    restore_rngs(rngs, saved)
    assert rngs["shuffle"].bit_generator.state == saved["shuffle"] and rngs["augment"].bit_generator.state == fresh


# --- training -------------------------------------------------------------------------


def _fit_from_config(overrides: list[str], threads: int) -> tuple[str, list[dict[str, float]]]:
    """A short fit built as a run builds it (no MLflow): its final weights' hash and history."""
    cfg = compose(["data.train_limit=2000", "data.val_size=500", "trainer.epochs=2", "model.dropout=0.2", *overrides])
    _, s = load_splits(cfg)
    rngs = rng_streams(cfg.seed)
    model = build_model(cfg, rngs["init"], np.dtype(cfg.trainer.dtype))
    settings = TrainSettings(epochs=cfg.trainer.epochs, batch_size=cfg.trainer.batch_size, threads=threads)
    result = fit(model, build_optimizer(cfg), build_schedule(cfg), s.x_train, s.y_train, s.x_val, s.y_val, settings,
                 rngs["shuffle"], rngs["dropout"], augmentation=build_augmentation(cfg), augment_rng=rngs["augment"])
    return weights_sha256(model.params), result.history


def _fit_as_before(threads: int) -> str:
    """The same fit as the code before augmentation existed called it: three streams, no augmentation arguments."""
    cfg = compose(["data.train_limit=2000", "data.val_size=500", "trainer.epochs=2", "model.dropout=0.2"])
    _, s = load_splits(cfg)
    init, shuffle, dropout = (np.random.default_rng(c) for c in np.random.SeedSequence(cfg.seed).spawn(3))
    model = build_model(cfg, init, np.dtype(cfg.trainer.dtype))
    settings = TrainSettings(epochs=2, batch_size=cfg.trainer.batch_size, threads=threads)
    fit(model, build_optimizer(cfg), build_schedule(cfg), s.x_train, s.y_train, s.x_val, s.y_val, settings, shuffle,
        dropout)
    return weights_sha256(model.params)


@pytest.mark.parametrize("threads", [1, 2])
def test_augment_none_is_bit_identical_to_no_augmentation(threads: int) -> None:
    """Also checked by hand against main before the change: the same short run, the same weights_sha256."""
    none, _ = _fit_from_config(["augment=none"], threads)
    assert none == _fit_from_config([], threads)[0] == _fit_as_before(threads)
    shifted, _ = _fit_from_config(["augment=shift"], threads)
    assert shifted != none  # the group does reach the training
    assert shifted == _fit_from_config(["augment=shift"], threads)[0]  # and the augmented fit is reproducible


def _linear_accuracy(x_train: np.ndarray, labellings: list[np.ndarray], x_test: np.ndarray,
                     y_test: np.ndarray) -> list[float]:
    """Test accuracy of a least-squares linear classifier on ``[pixels / 255, 1]`` (MNIST: ~85 %), one per labelling
    of ``x_train`` (each ``(N,)``): one solve serves them all.

    Solved through the normal equations with a small ridge (``X'X + I``), which keeps them well posed (constant
    border pixels) and scores as plain least squares does here, at a fraction of an SVD's cost.
    """
    features = lambda pixels: np.hstack([pixels / 255.0, np.ones((len(pixels), 1))])  # noqa: E731
    f = features(x_train)  # (N, 785)
    targets = np.hstack([np.eye(10)[y] for y in labellings])  # (N, 10 * len(labellings))
    weights = np.linalg.solve(f.T @ f + np.eye(f.shape[1]), f.T @ targets)
    scores = features(x_test) @ weights  # (M, 10 * len(labellings))
    return [float(np.mean(scores[:, 10 * i:10 * (i + 1)].argmax(axis=1) == y_test)) for i in range(len(labellings))]


def test_augmented_digits_keep_their_class() -> None:
    """Augmented digits still carry their labels: a linear classifier learns them from augmented images and
    reads other augmented images far above chance (it is no match for shifts, so below its clean ~85 %),
    while the same images with their labels scrambled -- what a transform that lost the class would
    give -- stay near 10 %."""
    raw = data.load_dataset("mnist")
    x = np.ascontiguousarray(raw.train_images[:6000].reshape(6000, 784))
    y = raw.train_labels[:6000].astype(np.int64)
    train, test = slice(0, 5000), slice(5000, 6000)
    assert _linear_accuracy(x[train], [y[train]], x[test], y[test])[0] > 0.8
    scrambled = np.random.default_rng(0).permutation(y[train])
    for name, transform in DEFAULTS.items():
        x_train, x_test = apply(transform, x[train], seed=1), apply(transform, x[test], seed=2)
        labelled, unlabelled = _linear_accuracy(x_train, [y[train], scrambled], x_test, y[test])
        assert labelled > 0.5 and unlabelled < 0.2, (name, labelled, unlabelled)


@pytest.mark.slow
def test_a_short_augmented_run_learns_and_logs_its_strengths(tracking_uri: str, tmp_path: Path) -> None:
    result = run(compose(small_overrides(tracking_uri, "augment=elastic", "trainer.epochs=3")),
                 output_dir=tmp_path / "run")
    assert result.metrics["test_accuracy"] > 0.85, result.metrics
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    r = MlflowClient(tracking_uri).get_run(result.run_id)
    assert {k: v for k, v in r.data.params.items() if k.startswith("augment.")} == {
        "augment.name": "elastic", "augment.alpha": "34.0", "augment.sigma": "4.0"}
    assert r.info.run_name.endswith("-elastic")


@pytest.mark.parametrize("threads", [1, 2])
def test_an_augmented_fit_resumed_from_a_checkpoint_equals_an_uninterrupted_one(tmp_path: Path, threads: int) -> None:
    def setup():
        rng = np.random.default_rng(0)
        x, y = digits(600, seed=1), rng.integers(0, 10, 600)
        model = MLP.initialize([784, 32, 10], ACTIVATIONS["relu"](), INITIALIZERS["he"], np.random.default_rng(1),
                               dropout=0.2)
        rngs = {"shuffle": np.random.default_rng(2), "dropout": np.random.default_rng(3),
                "augment": np.random.default_rng(4)}
        return x, y, model, SGD(momentum=0.9, nesterov=True, weight_decay=5e-4), rngs

    sched, aug = Schedule("cosine", 0.01, 4), DEFAULTS["affine"]

    def train(x, y, model, opt, rngs, epochs, **kw):
        return fit(model, opt, sched, x[100:], y[100:], x[:100], y[:100],
                   TrainSettings(epochs=epochs, batch_size=100, threads=threads),
                   rngs["shuffle"], rngs["dropout"], augmentation=aug, augment_rng=rngs["augment"], **kw)

    x, y, model, opt, rngs = setup()
    train(x, y, model, opt, rngs, 4)
    straight = weights_sha256(model.params)

    x, y, model, opt, rngs = setup()
    ck = Checkpointer(tmp_path, opt, rngs, "cfg: 1", "run", epochs=2, keep=1)
    ck.bind(state := FitResult())
    train(x, y, model, opt, rngs, 2, callbacks=[ck], result=state)
    saved = load_state(latest_checkpoint(tmp_path))
    assert "augment" in saved.rng_states
    x, y, model, opt, rngs = setup()  # a fresh process: nothing carried over but the file
    model.load_params(saved.params)
    opt.load_state_dict(saved.optimizer)
    restore_rngs(rngs, saved.rng_states)
    train(x, y, model, opt, rngs, 4, result=saved.result)
    assert weights_sha256(model.params) == straight
