"""``--multirun`` sweeps in MLflow: one parent run per sweep, every member a child.

Hydra runs :class:`MlflowSweepCallback` in the process that drives the sweep
(whatever the sweeper and launcher): before any member starts it creates (and
migrates) the store once, opens the parent run and writes its id to
``<sweep dir>/mlflow_sweep.json``; every member, in whatever process or node
it runs, finds the parent there and tags its own run as a child. When the
sweep ends the callback closes the parent with the sweep's summary
(:mod:`mnist_np.experiment.sweep.summary`).

Hydra builds its callbacks itself, from an import string, so the callback
and the command that started Hydra (``scripts/train.py``, which must close a
sweep that crashed before its end and report the outcome) meet in one
object, :data:`SESSION`. The parent run's work is in
:mod:`mnist_np.experiment.sweep.parent` and :mod:`mnist_np.experiment.sweep.summary`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mnist_np import speedups
from mnist_np.common.errors import error_line
from mnist_np.common.locks import SWEEP_LOCK, acquire, release
from mnist_np.experiment.sweep.info import SweepInfo
from mnist_np.experiment.sweep.parent import open_sweep, reopen_sweep
from mnist_np.experiment.sweep.records import resumable
from mnist_np.experiment.sweep.summary import SweepSummary, close_sweep
from mnist_np.tracking.uris import TrackingUnavailable

log = logging.getLogger(__name__)

JOBLIB_LAUNCHER = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
# What a sweep member imports on its way through a run, preloaded by the
# joblib workers' server (speedup warm_workers). A module missing here is
# imported by the member itself; one that fails to import is skipped by the
# server and fails in the member, with the member's own error.
RUN_MODULES = [
    "hydra.core.utils",
    "mnist_np.experiment.run.single",
    "mnist_np.experiment.sweep.session",
    "mnist_np.train.sharded",
    "mnist_np.plots",
    "mnist_np.tracking.logged_model",
    "mnist_np.tracking.pyfunc_model",
    "mlflow.pyfunc",
    "mlflow.models",
    "threadpoolctl",
    "matplotlib.pyplot",  # a third of a second; the backend is chosen later, by mnist_np.plots
]


def warm_joblib_workers(launcher: Mapping[str, Any]) -> bool:
    """For Hydra's joblib launcher (``hydra.launcher`` given), workers that fork with :data:`RUN_MODULES` imported.

    The speedup ``warm_workers`` (see :mod:`mnist_np.speedups`); False, changing
    nothing, for any other launcher.
    """
    if launcher.get("_target_") != JOBLIB_LAUNCHER:
        return False
    return speedups.preload_joblib_workers(RUN_MODULES)


class SweepSession:
    """The sweep this process opened, and how it ended: what ``scripts/train.py`` reports.

    ``open`` until closed (by the callback at the sweep's end, or by the
    command when the sweep stopped first); then ``summary``, or ``unsynced``
    (why MLflow could not be reached as it ended).
    """

    def __init__(self) -> None:
        self.open: SweepInfo | None = None
        self.summary: SweepSummary | None = None
        self.unsynced: str | None = None
        self.resume_dir: Path | None = None  # set by the command for `--multirun resume=...`: continue that sweep
        self._locks: list[Path] = []

    def hold(self, sweep_dir: Path) -> None:
        """Lock ``sweep_dir`` for this process until the sweep is over: one driver per sweep.

        Raises:
            LockHeld: another live process drives that sweep (named in the one line).
        """
        self._locks.append(acquire(Path(sweep_dir), f"sweep {Path(sweep_dir)}", SWEEP_LOCK))

    def release(self) -> None:
        """Give back the sweep's lock (at the end of the command)."""
        while self._locks:
            release(self._locks.pop())

    def finish(self, crash: str | None = None, status: str = "FAILED") -> SweepSummary | None:
        """Summarise and close the sweep this process opened, if it is still open.

        Args:
            crash: why the sweep itself stopped early (then the parent ends ``status``).
        """
        info, self.open = self.open, None
        if info is None:
            return None
        sweep_dir = Path(info.sweep_dir)
        if crash is None and not any(resumable(d) for d in sweep_dir.iterdir() if d.is_dir() and d.name.isdigit()):
            # Every member returned and none was killed or lacked its data or store: `resume=` has nothing to do.
            info.completed = True
            info.save()
        try:
            self.summary = close_sweep(info, crash, status, members_done=True)
        except Exception as e:  # noqa: BLE001 -- e.g. the server died between two of the closing calls
            # The members' results are in MLflow or their dirs; the summary can be made later, from MLflow.
            self.unsynced = str(e) if isinstance(e, TrackingUnavailable) else error_line(e)[:500]
            log.warning("MLflow is unreachable as the sweep ends (%s); upload and summarise it later with: "
                        "python scripts/sync.py %s", self.unsynced, info.sweep_dir)
            return None
        return self.summary

    def error(self) -> str | None:
        """The one line a finished sweep's command prints when something went wrong (None: every member finished)."""
        if self.unsynced is not None:
            return (f"the sweep is over but MLflow was unreachable ({self.unsynced}); its runs are in their "
                    "output dirs: upload them with python scripts/sync.py <sweep dir>")
        if self.summary is not None and not self.summary.ok:
            return f"{self.summary.failed} of {self.summary.total} sweep members failed"
        return None


SESSION = SweepSession()


def note_workers(workers: int) -> None:
    """Record in the open sweep that ``workers`` loops take its members (the parent's ``workers_busy_fraction``)."""
    if SESSION.open is not None:
        SESSION.open.workers = workers
        SESSION.open.save()


class MlflowSweepCallback(Callback):
    """Hydra callback: a parent MLflow run around every ``--multirun`` sweep."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = OmegaConf.to_container(config.hydra.launcher, resolve=True)
        # First, so the workers' imports overlap everything below.
        warm_joblib_workers(launcher if isinstance(launcher, dict) else {})
        SESSION.hold(Path(str(config.hydra.sweep.dir)).resolve())  # already held when the command took it first
        SESSION.open = open_sweep(config) if SESSION.resume_dir is None else reopen_sweep(SESSION.resume_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        SESSION.finish()
