"""Worker processes forked by the training loop: shared memory, how they start, report failure and end.

Two parts of the training fork helpers that share memory with their parent:
the shard processes of :mod:`mnist_np.train.sharded` and the augmentation
worker of :mod:`mnist_np.train.augmented`. Both meet their parent through
arrays in an anonymous shared mapping (:func:`shared_zeros`), never through
pickled messages, and both follow the same rules, kept here:

- it is forked by :func:`mnist_np.common.forking.fork`, with the parent's
  other threads paused (a child of ``fork`` has only the forking thread, but
  every lock as the others held it);
- a worker ignores Ctrl-C and a scheduler's signals: they are the parent's
  to handle (Slurm sends its preemption and time-limit warnings, SIGTERM and
  SIGUSR2, to every process of the job, and a worker that ran the parent's
  inherited handler would requeue the job a second time);
- it runs single-threaded BLAS, never returns into the parent's stack and
  never runs its exit handlers;
- an exception in it is written, as one line, into a :class:`Reports` slot
  that the parent reads and raises;
- the parent reaps it on exit, and kills one that does not end in time.
"""

from __future__ import annotations

import math
import mmap
import os
import signal
import time
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from mnist_np.common.forking import fork

MESSAGE_BYTES = 1000  #: the longest error line a worker reports
JOB_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def shared_zeros(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """Zeros in memory that processes forked afterwards share (an anonymous shared mapping)."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    buffer = mmap.mmap(-1, max(count * dtype.itemsize, 1))
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


class Reports:
    """Per worker slot: a failed flag and its one-line message, in shared memory."""

    def __init__(self, slots: int) -> None:
        self.failed = shared_zeros((slots,), np.int64)
        self.messages = shared_zeros((slots, MESSAGE_BYTES), np.uint8)

    def report(self, slot: int, error: BaseException) -> None:
        """In the worker: ``error`` as ``"Type: message"`` into ``slot``."""
        message = f"{type(error).__name__}: {error}".encode(errors="replace")[: MESSAGE_BYTES - 1]
        self.messages[slot, : len(message)] = np.frombuffer(message, dtype=np.uint8)
        self.failed[slot] = 1

    def message(self, slot: int) -> str | None:
        """In the parent: what the worker in ``slot`` reported, or None."""
        if not self.failed[slot]:
            return None
        return bytes(self.messages[slot]).rstrip(b"\0").decode(errors="replace")


def fork_worker(serve: Callable[[], None], reports: Reports, slot: int,
                before: Callable[[], None] | None = None) -> int:
    """Fork a worker that runs ``serve()`` and exits (status 1 after reporting an exception); returns its pid.

    ``before()`` runs first in the child (closing the parent's ends of pipes, say).
    """
    pid = fork()
    if pid:
        return pid
    # The child: never return into the caller's stack, never run its exit handlers.
    code = 0
    try:
        for sig in JOB_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        threadpool_limits(limits=1, user_api="blas")
        if before is not None:
            before()
        serve()
    except BaseException as e:  # noqa: BLE001 -- reported to the parent, which raises it
        reports.report(slot, e)
        code = 1
    finally:
        os._exit(code)


def exited(pid: int) -> str | None:
    """How worker ``pid`` ended (then it is reaped), or None while it runs."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return describe(status) if done else None


def reap(pids: list[int], seconds: float = 10.0) -> None:
    """Wait for workers told to stop; kill any still there after ``seconds``."""
    deadline = time.monotonic() + seconds
    for pid in pids:
        try:
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.001)
        except ChildProcessError:  # already reaped
            pass


def describe(status: int) -> str:
    """A ``waitpid`` status in words."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"
