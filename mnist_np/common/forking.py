"""The one ``fork`` of the package: made while the process has one thread.

A child of ``fork`` (with no ``exec`` after it) gets a copy of the whole
memory, every lock included, but only the thread that called ``fork``. A
lock that another thread held at that instant -- logging's, SQLite's, the
allocator's, an HTTP pool's -- stays held in the child for good, and the
child hangs the first time it takes it (Python 3.12 warns about such forks).
The package forks without ``exec`` where speed needs it: its shard
processes, its augmentation worker, its figure children. So every one of
those forks goes through :func:`fork`, which makes sure no other thread is
running:

- a thread the package starts, and can stop and start again, is registered
  while it runs (:func:`pausable`, e.g. MLflow's system-metrics monitor in
  :mod:`mnist_np.tracking.system_metrics`). :func:`fork` pauses every one,
  forks, and resumes them in the parent -- never in the child, which must
  not start its parent's threads; :func:`paused` holds them paused over
  several forks in a row, so that they stop once, not once per fork;
- threads of libraries must not be there at all: their starters switch them
  off (tqdm's monitor in :mod:`mnist_np.train.loop`, MLflow's artifact
  progress bars in :mod:`mnist_np.tracking.client`). Some linger only as
  garbage: the idle workers of a thread pool that nothing references any
  more end when the pool is collected, and MLflow's artifact repositories
  keep theirs in a reference cycle, which only the cycle collector frees. So
  where other threads are alive at a fork, :func:`fork` collects garbage
  (0.15 s with MLflow loaded; only then, so about once per sweep member
  after the first) and gives them :data:`SETTLE_SECONDS` to end;
- any thread still alive then is named in one warning (per set of names):
  the fork goes on, since the child cannot be helped from here, but the
  thread's starter can be fixed.

Standard library only, like all of :mod:`mnist_np.common`: the layers that
fork pass their pause and resume functions in.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

log = logging.getLogger(__name__)

# How long threads freed by a garbage collection get to end before a fork: an idle pool worker
# wakes and ends within a millisecond or two; a thread that is not garbage never ends, and costs this once.
SETTLE_SECONDS = 0.2


@dataclass(frozen=True)
class Pausable:
    """A thread the package runs and can stop for a fork: ``pause()`` returns once it has ended (or given up)."""

    name: str
    pause: Callable[[], None]
    resume: Callable[[], None]


_registered: dict[int, Pausable] = {}  # by token, in the order registered
_tokens = itertools.count()
_held: list[Pausable] = []  # paused by the outermost `paused()` block, to be resumed at its end
_depth = 0  # nesting of `paused()` blocks in this process
_stubborn: weakref.WeakSet[threading.Thread] = weakref.WeakSet()  # outlived a settle once: not waited for again
_warned: set[tuple[str, ...]] = set()


@contextmanager
def pausable(name: str, pause: Callable[[], None], resume: Callable[[], None]) -> Iterator[None]:
    """While inside, :func:`fork` calls ``pause()`` before each fork and ``resume()`` after it, in the parent.

    Register a thread right after starting it and leave the block before
    stopping it for good, so that no fork resumes a thread that has ended.
    """
    token = next(_tokens)
    _registered[token] = Pausable(name, pause, resume)
    try:
        yield
    finally:
        _registered.pop(token, None)


@contextmanager
def paused() -> Iterator[None]:
    """The registered threads paused while inside (blocks nest; the outermost one pauses and resumes).

    For several forks in a row: each :func:`fork` inside finds them paused
    already. A child that returns through this block (from :func:`fork`)
    resumes nothing: those are its parent's threads.
    """
    global _depth
    owner = os.getpid()
    if _depth == 0:
        _held[:] = _pause_all()
    _depth += 1
    try:
        yield
    finally:
        if os.getpid() == owner:
            _depth -= 1
            if _depth == 0:
                held, _held[:] = list(_held), []
                _resume_all(held)


def fork() -> int:
    """``os.fork()`` with no other thread running (see the module doc): 0 in the child, its pid in the parent."""
    with paused():
        _settle()
        return os.fork()


def _pause_all() -> list[Pausable]:
    """Pause every registered thread, newest first; returns them. A pause that fails is a warning, not an error."""
    done = []
    for entry in reversed(list(_registered.values())):
        try:
            entry.pause()
        except Exception as e:  # noqa: BLE001 -- the thread may still run: _settle names it
            log.warning("could not pause %s for a fork: %s: %s", entry.name, type(e).__name__, e)
        done.append(entry)
    return done


def _resume_all(entries: list[Pausable]) -> None:
    """Resume what :func:`_pause_all` paused, oldest first; a failure only loses that thread's work from now on."""
    for entry in reversed(entries):
        try:
            entry.resume()
        except Exception as e:  # noqa: BLE001 -- e.g. system metrics no longer logged: never a failed run
            log.warning("could not resume %s after a fork: %s: %s", entry.name, type(e).__name__, e)


def _others() -> list[threading.Thread]:
    me = threading.current_thread()
    return [t for t in threading.enumerate() if t is not me]


def _settle() -> None:
    """Before a fork: let threads that only garbage keeps end; warn (once per set) about any still alive."""
    waiting = [t for t in _others() if t not in _stubborn]
    if waiting:
        gc.collect()  # frees unreachable thread pools: their idle workers wake and end
        deadline = time.monotonic() + SETTLE_SECONDS
        for thread in waiting:
            try:
                thread.join(max(0.0, deadline - time.monotonic()))
            except RuntimeError:  # a thread Python did not start (a "dummy" thread) cannot be joined
                pass
            if thread.is_alive():
                _stubborn.add(thread)
    alive = tuple(sorted(t.name for t in _others()))
    if alive and alive not in _warned:
        _warned.add(alive)
        log.warning("forking with %d other thread(s) alive: %s; the child may hang on a lock one of them held "
                    "(switch it off, or register it with mnist_np.common.forking.pausable)",
                    len(alive), ", ".join(alive))


def _forget() -> None:
    """In a child: the registered threads are the parent's, and none of them runs here."""
    global _depth
    _registered.clear()
    _held.clear()
    _depth = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget)
