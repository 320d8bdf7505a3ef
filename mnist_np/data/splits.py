"""Loading a verified dataset and turning it into model-ready train/val/test arrays."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mnist_np.data.idx import DataError, parse_idx
from mnist_np.data.sources import acquire
from mnist_np.data.specs import DatasetSpec, get_spec

log = logging.getLogger(__name__)

__all__ = ["RawDataset", "Splits", "load_dataset", "make_splits", "to_features"]


@dataclass(frozen=True)
class RawDataset:
    """A verified dataset exactly as stored.

    Attributes:
        spec: the dataset's spec.
        train_images: uint8 ``(N_train, 28, 28)`` (60000 for MNIST), read-only.
        train_labels: uint8 ``(N_train,)``, values < ``len(spec.class_names)``.
        test_images: uint8 ``(N_test, 28, 28)`` (10000 for MNIST), read-only.
        test_labels: uint8 ``(N_test,)``.
        digest: ``spec.digest``, a short hash of the four pinned checksums.
    """

    spec: DatasetSpec
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    digest: str

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names


def load_dataset(
    name: str | DatasetSpec,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    mirrors: Sequence[str] | None = None,
    use_npm: bool = True,
    progress: bool | None = None,
) -> RawDataset:
    """Obtain (see :func:`~mnist_np.data.sources.fetch_files`), parse and sanity-check a dataset.

    Raises:
        DataError: unknown name, no source worked, or inconsistent contents
        (shapes, image/label counts, label values out of range).
    """
    spec = get_spec(name)
    found = acquire(spec, data_dir, cache_dir, mirrors, use_npm, progress)
    arrays = {kind: parse_idx(v.raw, source=v.path) for kind, v in found.items()}

    n_classes = len(spec.class_names)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        img_path, lbl_path = found[f"{split}_images"].path, found[f"{split}_labels"].path
        if images.ndim != 3:
            raise DataError(f"{img_path}: expected images (N, H, W), got shape {images.shape}")
        if labels.ndim != 1:
            raise DataError(f"{lbl_path}: expected labels (N,), got shape {labels.shape}")
        if len(images) != len(labels):
            raise DataError(f"{split} set: {len(images)} images in {img_path} but {len(labels)} labels in {lbl_path}")
        if labels.size and int(labels.max()) >= n_classes:
            raise DataError(f"{lbl_path}: label {int(labels.max())} out of range for {n_classes} classes")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataError(
            f"{spec.name}: train and test image shapes differ "
            f"({arrays['train_images'].shape[1:]} vs {arrays['test_images'].shape[1:]})"
        )
    log.info(
        "loaded %s: %d train, %d test (digest %s)",
        spec.name,
        len(arrays["train_labels"]),
        len(arrays["test_labels"]),
        spec.digest,
    )
    return RawDataset(spec=spec, digest=spec.digest, **arrays)


@dataclass(frozen=True)
class Splits:
    """Model-ready arrays. ``D`` = pixels per image (784 for 28x28).

    Attributes:
        x_train: ``(N_train, D)`` float, C-contiguous, values in [0, 1].
        y_train: ``(N_train,)`` int64.
        x_val: ``(N_val, D)``; ``(0, D)`` when ``val_size=0``.
        y_val: ``(N_val,)`` int64.
        x_test: ``(N_test, D)`` (10000 for MNIST).
        y_test: ``(N_test,)`` int64.
        sizes: ``{"train": N_train, "val": N_val, "test": N_test}``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    sizes: dict[str, int]


def _stratified_counts(class_counts: np.ndarray, total: int) -> np.ndarray:
    """Per-class sample counts proportional to ``class_counts`` summing to ``total``.

    Largest-remainder rounding in exact integer arithmetic: each class gets
    ``floor(c * total / n)`` and the leftover units go to the largest
    remainders (ties to the lower class index, for determinism). Every count
    stays within 1 of the exact proportion and never exceeds its class size
    when ``total < n``.

    Args:
        class_counts: int ``(K,)`` samples per class, summing to ``n``.
        total: number of samples to pick, ``0 <= total <= n``.

    Returns:
        int64 ``(K,)``.
    """
    counts = class_counts.astype(np.int64)
    n = int(counts.sum())
    scaled = counts * total
    base, rem = scaled // n, scaled % n
    leftover = total - int(base.sum())
    order = np.argsort(-rem, kind="stable")
    base[order[:leftover]] += 1
    return base


def to_features(images: np.ndarray, index: np.ndarray | None, dtype: npt.DTypeLike) -> np.ndarray:
    """Gather rows, flatten to ``(M, D)`` and scale to [0, 1] as ``dtype``.

    Args:
        images: uint8 ``(N, H, W)`` (or ``(N, D)``), values 0..255.
        index: int ``(M,)`` rows to take, or None for all ``N``.
        dtype: a floating dtype.

    Returns:
        C-contiguous ``(M, D)`` ``dtype``, ``D = H * W``: converted first, then
        divided by 255 in ``dtype`` -- the one definition of a feature, shared by
        training and inference so their scores agree to the last bit.

    Converts first and divides in place so only one ``(M, D)`` float array is
    allocated (fancy indexing already returns a fresh uint8 copy).
    """
    dtype = np.dtype(dtype)
    picked = images if index is None else images[index]
    # An explicit width: reshape(M, -1) is ambiguous when M == 0 (val_size=0).
    width = math.prod(images.shape[1:])
    out = np.ascontiguousarray(picked.reshape(len(picked), width), dtype=dtype)
    np.divide(out, dtype.type(255), out=out)
    return out


def _split_indices(labels: np.ndarray, n_classes: int, val_size: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(train_idx, val_idx)`` for ``labels: (N,)``: train shuffled, val in original order."""
    rng = np.random.default_rng(split_seed)
    per_class = _stratified_counts(np.bincount(labels, minlength=n_classes), int(val_size))
    val_parts: list[np.ndarray] = []
    train_parts: list[np.ndarray] = []
    for c in range(n_classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        val_parts.append(members[: per_class[c]])
        train_parts.append(members[per_class[c] :])
    val_idx = np.sort(np.concatenate(val_parts))
    train_idx = rng.permutation(np.concatenate(train_parts))
    return train_idx, val_idx


def _check_split_args(n: int, val_size: int, train_limit: int | None, dtype: npt.DTypeLike) -> np.dtype:
    """Validate :func:`make_splits`' arguments for ``n`` training samples; returns ``np.dtype(dtype)``.

    Raises:
        DataError: naming the config key (``data.val_size``, ``data.train_limit``).
    """
    if isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer)) or not 0 <= val_size < n:
        raise DataError(f"data.val_size must be an integer in [0, {n - 1}] (got {val_size!r})")
    if train_limit is not None and (
        isinstance(train_limit, bool) or not isinstance(train_limit, (int, np.integer)) or train_limit <= 0
    ):
        raise DataError(f"data.train_limit must be null or a positive integer (got {train_limit!r})")
    fdtype = np.dtype(dtype)
    if fdtype.kind != "f":
        raise DataError(f"data dtype must be a floating type (got {fdtype})")
    return fdtype


def make_splits(
    raw: RawDataset,
    val_size: int = 5000,
    split_seed: int = 0,
    train_limit: int | None = None,
    dtype: npt.DTypeLike = np.float32,
    train_pixels: bool = False,
) -> Splits:
    """Split the training set into train/validation and convert to features.

    The validation split is stratified: each class contributes a count
    proportional to its share of the training set, rounded by largest
    remainder so the total is exactly ``val_size``. Which samples go where is
    drawn from ``np.random.default_rng(split_seed)`` only -- deliberately
    independent of the training seed, so every run of a sweep (whatever its
    model seed) is evaluated on the same validation split. The training split
    is then shuffled with the same generator; ``train_limit`` keeps its first
    ``train_limit`` samples (a random, roughly class-balanced subset for smoke
    runs). The validation rows are kept in their original order.

    Args:
        raw: from :func:`load_dataset`.
        val_size: validation samples, ``0 <= val_size < N_train`` (0: no
            validation split, ``x_val`` has shape ``(0, D)``).
        split_seed: seed of the split.
        train_limit: None, or a positive int capping the training split.
        dtype: floating dtype of the ``x_*`` arrays.
        train_pixels: make ``x_train`` the raw ``uint8`` pixels instead
            (the training loop scales each batch as it gathers it, reading a
            quarter of the bytes; see :mod:`mnist_np.train.stepper`).

    Returns:
        ``Splits`` with ``x_*`` ``(M, D)`` C-contiguous ``dtype`` in [0, 1]
        (``x / 255``) and ``y_*`` ``(M,)`` int64.

    Raises:
        DataError: ``val_size`` or ``train_limit`` out of range, or a
        non-floating ``dtype``.
    """
    labels = raw.train_labels
    fdtype = _check_split_args(len(labels), val_size, train_limit, dtype)
    train_idx, val_idx = _split_indices(labels, len(raw.spec.class_names), val_size, split_seed)
    if train_limit is not None:
        train_idx = train_idx[:train_limit]

    if train_pixels:
        x_train = np.ascontiguousarray(raw.train_images[train_idx].reshape(len(train_idx), -1))
    else:
        x_train = to_features(raw.train_images, train_idx, fdtype)
    x_val = to_features(raw.train_images, val_idx, fdtype)
    x_test = to_features(raw.test_images, None, fdtype)
    y_train, y_val = labels[train_idx].astype(np.int64), labels[val_idx].astype(np.int64)
    y_test = raw.test_labels.astype(np.int64)
    sizes = {"train": len(y_train), "val": len(y_val), "test": len(y_test)}
    return Splits(x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test, sizes=sizes)
