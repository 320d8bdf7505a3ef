"""The shortcuts a run takes outside its epochs, each measured, all behind one switch.

``MNIST_NP_SPEEDUPS`` turns them on or off: ``all`` (the default),
``none``, a comma list of the ones to use (``fast_exit,warm_workers``), or
of the ones to leave out (``-fast_exit``). ``scripts/bench.py run
--speedups`` times default runs with each one off in turn, side by side;
``scripts/bench.py sweep --speedups`` measures ``warm_workers``.
docs/performance.md gives the figures; a shortcut stays only while
it saves at least 0.3 s (one that saved less -- loading the data in a
thread while MLflow opened its store -- was measured and removed).

- ``figures_in_background``: the figures are drawn in forked processes while
  the run logs its model and uploads its artifacts (forked with the other
  threads paused: :mod:`mnist_np.common.forking`).
- ``fast_exit``: the process ends without the interpreter's teardown of
  thousands of modules, once every exit handler has run.
- ``warm_workers``: a parallel sweep's joblib workers fork from a server that
  has already imported what a run needs, instead of each importing it.
- ``skip_requirements_check``: MLflow's check, at every model save, that
  this environment satisfies the model's requirements -- which the project
  pins from this very environment -- is skipped.

Switched off, each does the plain thing. This module imports nothing of
the package but :mod:`mnist_np.common`, and no third-party library but
joblib (lazily): the code being sped up passes in what it needs.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, NoReturn, Sequence

from mnist_np.common.forking import fork, paused
from mnist_np.common.procs import forks_safely

log = logging.getLogger(__name__)
ENV = "MNIST_NP_SPEEDUPS"
NAMES = ("figures_in_background", "fast_exit", "warm_workers", "skip_requirements_check")


def enabled(name: str) -> bool:
    """Whether the shortcut ``name`` is on (see the module doc for ``MNIST_NP_SPEEDUPS``)."""
    if name not in NAMES:
        raise ValueError(f"unknown speedup {name!r}; known: {', '.join(NAMES)}")
    value = os.environ.get(ENV, "all").strip() or "all"
    words = [w.strip() for w in value.split(",") if w.strip()]
    unknown = [w for w in words if w.lstrip("-") not in (*NAMES, "all", "none")]
    if unknown:
        raise ValueError(f"{ENV}={value!r} names {', '.join(unknown)}; expected all, none, or a comma list of "
                         f"{', '.join(NAMES)} (each may start with - to leave it out)")
    if words == ["none"]:
        return False
    if all(w.startswith("-") for w in words) or words == ["all"]:
        return f"-{name}" not in words
    return name in words


# ---------------------------------------------------------------- figures_in_background


def in_children(groups: Sequence[Sequence[Callable[[], object]]]) -> Callable[[], str | None]:
    """Run each group of calls in its own forked process; returns ``wait``, giving the errors in one line (None if
    none).

    Without ``figures_in_background``, or where forking is unsafe (not
    Linux), the calls run here, now, and ``wait`` only reports.
    """
    if not (enabled("figures_in_background") and forks_safely()):
        error = None
        try:
            for group in groups:
                for call in group:
                    call()
        except Exception as e:  # noqa: BLE001 -- reported like the children's errors
            error = f"{type(e).__name__}: {e}"
        return lambda: error
    with paused():  # the process's own threads (system metrics) stop once for all the children, not once each
        children = [_fork(group) for group in groups]

    def wait() -> str | None:
        errors = [e for e in (child() for child in children) if e]
        return "; ".join(errors) or None

    return wait


def _fork(calls: Sequence[Callable[[], object]]) -> Callable[[], str | None]:
    """Fork a process that makes ``calls``; returns a function that waits for it and gives its error, if any.

    Forked by :func:`mnist_np.common.forking.fork`: with no other thread running.
    """
    read_end, write_end = os.pipe()
    pid = fork()
    if pid == 0:  # the child: work, report, and leave without running the caller's exit handlers
        os.close(read_end)
        code = 0
        try:
            for call in calls:
                call()
        except BaseException as e:  # noqa: BLE001 -- handed to the parent through the pipe
            os.write(write_end, f"{type(e).__name__}: {e}".encode(errors="replace")[:4000])
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)

    def wait() -> str | None:
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode(errors="replace").strip()
        _, status = os.waitpid(pid, 0)
        if status == 0:
            return None
        return message or f"the child process ended with status {status}"

    return wait


# ---------------------------------------------------------------- fast_exit

_exit_code: list[int] = []  # set by exit_fast; read by the last exit handler


def arm_fast_exit() -> None:
    """Register the handler that ends the process once every other exit handler has run.

    Call it first thing in an entry point: exit handlers run last-registered
    first, so one registered before any other runs after all of them. The
    interpreter has joined its non-daemon threads before it runs them. What
    is left after that is the teardown of every module and object, about a
    second with MLflow loaded, which :func:`os._exit` skips.
    """
    atexit.register(_leave_now)


def exit_fast(code: int) -> NoReturn:
    """``sys.exit(code)``; with ``fast_exit`` on (and :func:`arm_fast_exit` called), without the teardown."""
    if enabled("fast_exit"):
        _exit_code.append(code)
    sys.exit(code)


def _leave_now() -> None:
    if not _exit_code:
        return  # an uncaught exception, or fast_exit off: the interpreter finishes as usual
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(_exit_code[-1])


# ---------------------------------------------------------------- warm_workers


def preload_joblib_workers(modules: Sequence[str]) -> bool:
    """Make this process's joblib (loky) workers fork from a server that imports ``modules`` first.

    Starts the server now (it imports in the background) and sets loky's
    start method for this process to ``forkserver``. Returns False, changing
    nothing, with ``warm_workers`` off or where forking is not safe.
    """
    import multiprocessing

    if not (enabled("warm_workers") and forks_safely()) or "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    from multiprocessing import forkserver

    from joblib.externals.loky.backend.context import set_start_method

    multiprocessing.set_forkserver_preload(list(modules))
    try:
        forkserver.ensure_running()  # returns at once; the server imports in the background
    except Exception as e:  # noqa: BLE001 -- only slower: loky starts plain workers
        log.warning("joblib workers start without a preloaded server (%s: %s)", type(e).__name__, e)
        return False
    set_start_method("forkserver", force=True)  # this process only: the sweep's parent
    return True


# ---------------------------------------------------------------- skip_requirements_check


@contextmanager
def requirements_check_skipped(module: object, check: str) -> Iterator[None]:
    """Within the block, the function ``module.<check>`` does nothing, with ``skip_requirements_check`` on.

    Meant for MLflow's ``warn_dependency_requirement_mismatches``, which
    maps every installed package's files to its modules
    (``importlib.metadata.packages_distributions``) to tell whether each
    requirement of a model being saved is met here, and warns if not. The
    project's model requirements are exact pins read from this environment
    (:func:`mnist_np.tracking.logged_model.pyfunc_requirements`), so it has
    nothing to say, and its cost grows with every package installed. Where
    ``module`` has no such function (MLflow moved it), nothing changes;
    tests/test_speedups.py then fails, so the shortcut is not lost unseen.
    """
    original = getattr(module, check, None)
    if not (enabled("skip_requirements_check") and callable(original)):
        yield
        return
    setattr(module, check, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        setattr(module, check, original)
