"""A parallel sweep's joblib workers, forked from a process that has already imported what runs need.

Hydra's joblib launcher (loky backend) starts each worker as a fresh
interpreter, which must import Hydra, MLflow, matplotlib and this package
(about 2.5 s of CPU each, every worker at once) before its first member
trains, while the sweep's parent waits. With Python's ``forkserver`` start
method, which loky accepts on Linux, one server process imports them once
and every worker is a fork of it, ready in milliseconds.
:func:`preload_joblib_workers` starts that server as the sweep opens, so
its imports run on the core that the parent's own set-up (creating the
store, opening the parent run: one core) leaves idle.

The server only imports; it never touches the MLflow store, which the
parent is creating at the same time (a fresh SQLite file must be created
by one process only). Measured by ``scripts/bench.py sweep``.
"""

from __future__ import annotations

import logging
import multiprocessing
from typing import Any, Mapping

log = logging.getLogger(__name__)

JOBLIB_LAUNCHER = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
# What a sweep member imports on its way through a run (runner, tracking,
# plots, the pyfunc model). A module missing here is imported by the member
# itself, as without the server; one that fails to import is skipped by the
# server and fails in the member, with the member's own error.
RUN_MODULES = [
    "hydra.core.utils",
    "mnist_np.runner",
    "mnist_np.tracking",
    "mnist_np.sweep",
    "mnist_np.stepper",
    "mnist_np.plots",
    "mnist_np.pyfunc_model",
    "mlflow.pyfunc",
    "mlflow.models",
    "threadpoolctl",
    "matplotlib.pyplot",  # a third of a second; the backend is chosen later, by mnist_np.plots
]


def preload_joblib_workers(launcher: Mapping[str, Any]) -> bool:
    """Make the joblib launcher configured as ``launcher`` (``hydra.launcher``) fork its workers from a preloaded server.

    Sets loky's start method for this process to ``forkserver`` and starts
    the server, which imports :data:`RUN_MODULES`. Returns False, changing
    nothing, for any other launcher or where forking is not safe (not
    Linux: see :func:`mnist_np.procs.forks_safely`).
    """
    from mnist_np.procs import forks_safely

    if launcher.get("_target_") != JOBLIB_LAUNCHER or not forks_safely():
        return False
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    from multiprocessing import forkserver

    from joblib.externals.loky.backend.context import set_start_method

    multiprocessing.set_forkserver_preload(RUN_MODULES)
    try:
        forkserver.ensure_running()  # returns at once; the server imports in the background
    except Exception as e:  # noqa: BLE001 -- only slower: loky starts plain workers
        log.warning("joblib workers start without a preloaded server (%s: %s)", type(e).__name__, e)
        return False
    set_start_method("forkserver", force=True)  # this process only: the sweep's parent
    log.debug("joblib workers will fork from a server preloading %s", ", ".join(RUN_MODULES))
    return True
