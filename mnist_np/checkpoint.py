"""Weights on disk: ``.npz`` files that load with ``allow_pickle=False``.

A weights file holds ``W1, b1, ..., WL, bL`` and, as a plain unicode array
named ``config``, the resolved YAML config that produced them -- so the file
alone says what made it (as nanoGPT's checkpoints do) and can be loaded
without unpickling anything. Writes are atomic: a crash mid-write leaves the
previous file intact.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from mnist_np.model import param_names

CONFIG_KEY = "config"


def atomic_savez(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` (.npz) via a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_weights(path: str | os.PathLike[str], params: Mapping[str, np.ndarray], config_yaml: str = "") -> Path:
    """Save ``params`` (``W1, b1, ...``) and the config text that made them."""
    arrays = {name: params[name] for name in param_names(len(params) // 2)}
    arrays[CONFIG_KEY] = np.array(config_yaml)
    return atomic_savez(path, arrays)


def load_weights(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], str]:
    """``(params, config_yaml)`` from a file written by :func:`save_weights`; never unpickles."""
    with np.load(path, allow_pickle=False) as f:
        config_yaml = str(f[CONFIG_KEY]) if CONFIG_KEY in f.files else ""
        names = [k for k in f.files if k != CONFIG_KEY]
        num_layers = len(names) // 2
        expected = param_names(num_layers)
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
