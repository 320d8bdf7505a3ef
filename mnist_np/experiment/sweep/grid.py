"""A grid sweep (``a=1,2 b=x,y``) as Hydra's basic sweeper runs it, except that a failed launch never loses a member.

Hydra's :class:`BasicSweeper` makes the grid's jobs and hands them, batch by
batch, to the launcher; when a launch raises -- joblib's pool broken by a
worker the OOM killer took, submitit giving up at its first failed job --
the sweep ends there, the other members' results lost with it. This
sweeper makes the same jobs, numbered the same way, but launches each batch
through :func:`mnist_np.experiment.sweep.members.launch_members`: members
the broken launch never started are launched again, and every member ends
with a record (a FAILED child with its reason if it could not make one).
It is the project's default sweeper (``conf/config.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from mnist_np.common.files import atomic_write_text
from mnist_np.experiment.config.schema import is_group
from mnist_np.experiment.sweep.launch import job_composer, launch_members
from mnist_np.experiment.sweep.ledger import Ledger
from mnist_np.experiment.sweep.session import note_workers
from mnist_np.experiment.sweep.workers import run_workers


class GridSweeperImpl(BasicSweeper):
    """``hydra/sweeper=mnist_np_grid``: Hydra's ``basic`` sweeper (same keys: ``max_batch_size``, ``params``)."""

    def sweep(self, arguments: list[str]) -> list[Sequence[Any]]:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(parser.parse_overrides([*self._parse_config(), *arguments]),
                                              self.max_batch_size)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(self.config))  # resume= reads it
        if packed := getattr(self.launcher, "workers", None):  # hydra.launcher.workers=K: K cluster jobs take them all
            return [self._packed(sweep_dir, int(packed))]
        returns: list[Sequence[Any]] = []
        first = 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = launch_members(self.launcher, batch, first, sweep_dir,
                                     job_composer(self.hydra_context, self.config))
            returns.append([r for r in results if r is not None])
            first += len(batch)
        return returns

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose, before anything runs, the jobs that nothing composed yet (Hydra composes every job: 0.2 s each).

        ``scripts/train.py`` checked the command line first (``check_overrides``): every swept value's type, and
        the config composed with each option of each swept group. A job can then only fail on a combination of
        group options not composed yet, so one job of each combination is composed here. Swept values from the
        config (``hydra.sweeper.params``) were checked by nobody: every job is composed, as Hydra does.
        """
        if self._parse_config():
            super().validate_batch_is_legal(batch)
            return
        composed: set[tuple[str, ...]] = getattr(self, "_composed", set())
        fresh = []
        for job in batch:
            choice = tuple(o for o in job if is_group(o.split("=", 1)[0]))
            if choice not in composed:
                composed.add(choice)
                fresh.append(job)
        self._composed = composed
        super().validate_batch_is_legal(fresh)

    def _packed(self, sweep_dir: Path, workers: int) -> list[Any]:
        """Every member of the grid in a ledger that ``workers`` cluster jobs take from (its batches do not matter)."""
        assert self.overrides is not None
        jobs = [job for batch in self.overrides for job in batch]
        self.validate_batch_is_legal(jobs)
        workers = min(workers, len(jobs))
        note_workers(workers)
        ran = run_workers(self.launcher, workers, Ledger.write(sweep_dir, jobs, 0))
        self.batch_index = len(self.overrides)
        return [r for _, r in sorted(ran, key=lambda pair: pair[0]) if r is not None]
