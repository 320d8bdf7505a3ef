"""Atomic file writes: a reader, or a crash, never meets half a file.

Every file the package replaces in place -- weights, checkpoints, cached
datasets, a run's or a sweep's pointer file -- goes through
:func:`atomic_write`: the bytes go to a temporary file in the same folder,
are flushed to disk (``fsync``), optionally checked, and only then renamed
over the target (``os.replace`` is atomic on POSIX and Windows). The
folder is synced too, so the rename itself survives a power cut.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[BinaryIO], None],
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``path`` through ``write(file)``, atomically; returns the path.

    Args:
        path: the file to create or replace (its folder is created).
        write: fills the open temporary file (binary mode).
        check: called with the temporary file's path once it is on disk and
            before the rename; an exception from it leaves the target as it was.

    Raises:
        OSError: the folder is not writable or the disk is full (the
        temporary file is removed; the previous file is intact).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, check: Callable[[Path], None] | None = None) -> Path:
    """``data`` into ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), check)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """``text`` (UTF-8) into ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
