"""The dataset cache: where verified files are kept between runs, written atomically.

Layout: ``<cache root>/<dataset>/<file>.gz``, always gzip-compressed
(compact, and one uniform layout whatever the source delivered). A cache
file that fails verification is renamed to ``<file>.corrupt-<timestamp>`` so
it is never trusted (or reported) again.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import logging
import os
from pathlib import Path

from mnist_np.common.files import atomic_write_bytes
from mnist_np.data.idx import DataError
from mnist_np.data.specs import verify

log = logging.getLogger(__name__)

__all__ = ["CACHE_ENV", "default_cache_dir", "quarantine", "store_in_cache"]

#: Environment variable that overrides the cache folder.
CACHE_ENV = "MNIST_NP_DATA_DIR"


def default_cache_dir() -> Path:
    """Cache root: ``$MNIST_NP_DATA_DIR`` if set, else ``~/.cache/mnist-np``.

    It holds one folder per dataset (``mnist/``, ``fashion_mnist/``) with
    ``<file>`` or ``<file>.gz`` inside.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mnist-np"


def quarantine(path: Path) -> None:
    """Rename a bad cache file to ``<file>.corrupt-<timestamp>``."""
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S%f")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, target)
        log.warning("moved bad cache file aside: %s -> %s", path, target.name)
    except OSError as exc:  # e.g. another process moved it first
        log.warning("could not move bad cache file %s aside: %s", path, exc)


def store_in_cache(folder: Path, fname: str, sha: str, raw: bytes, gz: bytes | None) -> Path:
    """Atomically write ``<folder>/<fname>.gz`` and return its path.

    Goes through :func:`mnist_np.common.files.atomic_write_bytes`: a temp file
    in the same folder, fsynced, re-read and verified, then renamed into
    place, so concurrent runs (e.g. a sweep) never observe a partial file.
    ``gz`` is reused when the source was already gzip-compressed; otherwise
    ``raw`` is compressed (mtime=0: reproducible).

    Raises:
        DataError: the folder is not writable, or the written copy does not verify.
    """
    if gz is None:
        gz = gzip.compress(raw, compresslevel=6, mtime=0)
    final = folder / f"{fname}.gz"

    def check(tmp: Path) -> None:
        # Read back what reached the disk: a bad disk or a full one that
        # truncated the write must not leave a file the next run trusts.
        ok, reason = verify(tmp.read_bytes(), sha, tmp)
        if ok is None:
            raise DataError(f"cache write verification failed: {reason}")

    try:
        atomic_write_bytes(final, gz, check)
    except OSError as exc:
        raise DataError(
            f"cannot write to cache folder {folder} ({exc.strerror or exc}); set {CACHE_ENV} to a writable folder"
        ) from exc
    log.info("cached %s", final)
    return final
