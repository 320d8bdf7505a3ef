"""Weights on disk: ``.npz`` files of plain arrays that load with ``allow_pickle=False``.

A weights file holds ``W1, b1, ..., WL, bL`` and, as a plain unicode array
named ``config``, the resolved YAML config that produced them -- so the file
alone says what made it (as nanoGPT's checkpoints do) and can be loaded
without unpickling anything. Writes are atomic: a crash mid-write leaves the
previous file intact.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from mnist_np.common.files import atomic_write
from mnist_np.nn.model import param_names

CONFIG_KEY = "config"


def save_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` (.npz, uncompressed) atomically."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


@contextmanager
def open_npz(path: str | os.PathLike[str]) -> Iterator[Any]:
    """``np.load`` without pickle; a file that would need pickle, or a damaged one, is refused in one line naming it."""
    try:
        with np.load(path, allow_pickle=False) as f:
            yield f
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise
        raise ValueError(f"{path}: not a file of plain arrays (reading it would take pickle, "
                         "which is never used)") from None
    except (zipfile.BadZipFile, EOFError) as e:  # truncated or damaged
        raise ValueError(f"{path}: not a readable .npz ({e})") from None


def save_weights(path: str | os.PathLike[str], params: Mapping[str, np.ndarray], config_yaml: str = "") -> Path:
    """Save ``params`` (``W1, b1, ...``) and the config text that made them."""
    arrays = {name: params[name] for name in param_names(len(params) // 2)}
    arrays[CONFIG_KEY] = np.array(config_yaml)
    return save_npz(path, arrays)


def load_weights(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], str]:
    """``(params, config_yaml)`` from a file written by :func:`save_weights`; never unpickles."""
    with open_npz(path) as f:
        config_yaml = str(f[CONFIG_KEY]) if CONFIG_KEY in f.files else ""
        names = [k for k in f.files if k != CONFIG_KEY]
        expected = param_names(len(names) // 2)
        if sorted(names) != sorted(expected):
            raise ValueError(f"{path}: expected arrays {expected}, found {sorted(names)}")
        params = {k: f[k] for k in expected}
    return params, config_yaml


def weights_sha256(params: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the arrays in layer order (name, dtype, shape, bytes).

    Defined on the arrays rather than the file so it does not depend on zip
    metadata: equal hashes mean bit-identical weights.
    """
    h = hashlib.sha256()
    for name in param_names(len(params) // 2):
        a = np.ascontiguousarray(params[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()
