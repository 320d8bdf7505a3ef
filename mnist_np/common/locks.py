"""One writer per run: an operating-system lock on a run's (or a sweep's) output dir while a process works in it.

The process that trains a run holds an exclusive ``flock`` on ``run.lock``
in the run's output dir (a sweep's driver: ``sweep.lock`` in the sweep
dir) for as long as it writes there. The kernel drops the lock when the
process dies -- ``kill -9``, the OOM killer, a lost node's NFS lease -- so
there is never a stale lock to clean by hand. The file also says who holds
it (host, pid, start time, command line), so a second command on the same
run is refused with one line that names the live process.

Why ``flock`` and not ``fcntl`` record locks: a record lock disappears as
soon as the process closes *any* descriptor of the file, which a reader
in the same process would do by merely looking at it. A ``flock`` belongs
to the open file, which a ``fork`` shares; so forked children (shard
processes, figure children) close their copy at once (``register_at_fork``),
and the lock lives exactly as long as the process that took it. On Linux,
NFS clients turn ``flock`` into a lock the server sees, so nodes of a
cluster exclude each other too; where the filesystem cannot lock at all
the caller is told so in one line, never left unguarded.

A process holds each lock once: taking a lock it already holds is a
no-op, so that a sweep's driver which took its lock before Hydra started
can take it again when the sweep opens.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mnist_np.common.procs import process_identity

RUN_LOCK = "run.lock"
SWEEP_LOCK = "sweep.lock"
# Errors of a filesystem that cannot lock (NFS without a lock manager, some FUSE mounts).
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its file records it."""

    host: str
    pid: int
    since: str
    command: str

    def line(self) -> str:
        """``pid 1234 on host node7 (since 2026-12-06 02:13:01: python scripts/train.py ...)``."""
        command = f": {self.command}" if self.command else ""
        return f"pid {self.pid} on host {self.host} (since {self.since}{command})"


class LockHeld(RuntimeError):
    """Another live process holds the lock; ``str()`` is one line naming it."""

    def __init__(self, what: str, path: Path, holder: Holder | None) -> None:
        self.what, self.path, self.holder = what, path, holder
        who = holder.line() if holder is not None else "another process (its lock file does not say which)"
        super().__init__(f"{what} is in use by {who}; wait for that process to end, or stop it, and try again")


class LockUnsupported(RuntimeError):
    """The filesystem of a run's output dir cannot lock; ``str()`` is one line saying so."""


# Path of each lock this process holds -> (its open file, how many holds).
_held: dict[Path, list] = {}


def _close_in_child() -> None:
    """In a forked child: drop the inherited copies, so a lock dies with the process that took it."""
    for entry in _held.values():
        try:
            os.close(entry[0])
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _command() -> str:
    return " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]


def read_holder(path: Path) -> Holder | None:
    """What ``path`` (a lock file) says of its holder; None if it says nothing readable."""
    for _ in range(3):  # the holder writes it right after locking: a reader may come in between
        try:
            info = json.loads(path.read_text())
            return Holder(str(info["host"]), int(info["pid"]), str(info.get("since", "?")),
                          str(info.get("command", "")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return None


def holder(folder: Path, name: str = RUN_LOCK) -> Holder | None:
    """The live process that holds ``folder``'s lock, or None when nobody does (this process never counts)."""
    path = Path(folder) / name
    if not path.is_file() or path.resolve() in _held:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        # A shared lock is granted unless someone holds the exclusive one (then they are alive).
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_holder(path) or Holder("?", 0, "?", "")
    except OSError:
        return None  # cannot tell on this filesystem
    finally:
        os.close(fd)  # also releases the shared lock
    return None


def acquire(folder: Path, what: str, name: str = RUN_LOCK) -> Path:
    """Take ``folder``'s lock for this process (again: a no-op); returns the lock file's path.

    Raises:
        LockHeld: a live process holds it (named in the message).
        LockUnsupported: the filesystem cannot lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / name).resolve()
    if path in _held:
        _held[path][1] += 1
        return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _lock_exclusive(fd)
    except BlockingIOError:
        os.close(fd)
        raise LockHeld(what, path, read_holder(path)) from None
    except OSError as e:
        os.close(fd)
        if e.errno in _NO_LOCKS:
            raise LockUnsupported(
                f"cannot lock {path} ({os.strerror(e.errno or 0)}): this filesystem does not support locks, so a "
                "second process could write the same run; put the outputs on one that does "
                "(hydra.run.dir / hydra.sweep.dir)"
            ) from None
        raise
    me = {"host": socket.gethostname(), "pid": os.getpid(), "identity": process_identity(),
          "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": _command()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    _held[path] = [fd, 1]
    return path


def _lock_exclusive(fd: int, tries: int = 5) -> None:
    """``flock(LOCK_EX)`` without waiting for a holder; a few quick retries, for a :func:`holder` look in progress."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(0.02)  # a look holds its shared lock for microseconds


def release(path: Path) -> None:
    """Give back one hold of the lock at ``path`` (acquire's return); the last one unlocks it."""
    entry = _held.get(path)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _held[path]
    # The file stays (truncating it would race a new holder); its content names the last holder.
    fcntl.flock(entry[0], fcntl.LOCK_UN)
    os.close(entry[0])


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` while inside, waiting for whoever holds it now.

    For a short critical section that processes on several nodes share
    (taking the next job of a sweep, asking a study for its next trial):
    holders keep it for milliseconds, so waiting is the right thing to do,
    unlike a run's lock, which is held for a whole training.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # also releases the lock


@contextmanager
def locked(folder: Path, what: str, name: str = RUN_LOCK) -> Iterator[Path]:
    """Hold ``folder``'s lock while inside (see :func:`acquire`)."""
    path = acquire(folder, what, name)
    try:
        yield path
    finally:
        release(path)
