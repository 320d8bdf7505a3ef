"""A grid's members as a ledger in the sweep dir, taken one at a time by workers on any node (a packed sweep).

With ``hydra.launcher.workers=K`` a grid of many members runs as K cluster
jobs instead of one job per member (see :mod:`mnist_np.experiment.sweep.workers`):
each worker takes the next member nobody has taken from ``ledger.json``,
under a lock that every node sharing the sweep dir respects, runs it, and
marks it done. A worker that Slurm requeued (preempted, out of time) takes
first the member it had not finished, which resumes from its checkpoint
into its own run, as a requeued one-member job does. After a failed
launch, the members taken and not done are settled from their dirs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mnist_np.common.files import atomic_write_text
from mnist_np.common.locks import exclusive
from mnist_np.experiment.sweep.info import SweepInfo
from mnist_np.experiment.sweep.launch import member_dir, settle_member
from mnist_np.experiment.sweep.records import Fate, fate

LEDGER = "ledger.json"
LEDGER_LOCK = "ledger.lock"


@dataclass
class Ledger:
    """The members of a packed grid (a :class:`~mnist_np.experiment.sweep.workers.JobSource`), kept in ``sweep_dir``."""

    sweep_dir: str

    @classmethod
    def write(cls, sweep_dir: Path, jobs: Sequence[Sequence[str]], first: int) -> "Ledger":
        """A new ledger of jobs ``first, first + 1, ...`` (their overrides), none taken yet."""
        entries = [{"number": first + i, "overrides": list(o), "worker": None, "done": False}
                   for i, o in enumerate(jobs)]
        with exclusive(Path(sweep_dir) / LEDGER_LOCK):
            atomic_write_text(Path(sweep_dir) / LEDGER, json.dumps({"jobs": entries}, indent=1))
        return cls(str(sweep_dir))

    def start(self, worker: int) -> None:
        pass

    def next(self, worker: int) -> tuple[list[str], int] | None:
        """The member ``worker`` took and never finished (it was requeued), else the first member nobody took."""
        with exclusive(Path(self.sweep_dir) / LEDGER_LOCK):
            jobs = self._read()
            mine = [j for j in jobs if j["worker"] == worker and not j["done"]]
            free = [j for j in jobs if j["worker"] is None]
            job = (mine or free or [None])[0]
            if job is None:
                return None
            job["worker"] = worker
            self._write(jobs)
        return list(job["overrides"]), int(job["number"])

    def done(self, worker: int, number: int, result: Any) -> None:
        self._update([number], done=True)

    def settle(self, error: str) -> None:
        """Members taken and not done when the workers stopped: one that never started is free again; the others
        are waited for if alive, else recorded (:func:`~mnist_np.experiment.sweep.launch.settle_member`), then done."""
        info = SweepInfo.load(self.sweep_dir)
        with exclusive(Path(self.sweep_dir) / LEDGER_LOCK):
            open_jobs = [j for j in self._read() if j["worker"] is not None and not j["done"]]
        settled, unstarted = [], []
        for j in open_jobs:
            output_dir = member_dir(Path(self.sweep_dir), j["number"])
            if fate(output_dir) == Fate.NOT_STARTED:
                unstarted.append(j["number"])
            elif info is not None:
                settle_member(info, j["number"], j["overrides"], output_dir, None, error)
                settled.append(j["number"])
        self._update(settled, done=True)
        self._update(unstarted, done=False)

    def _update(self, numbers: list[int], done: bool) -> None:
        """Mark jobs ``numbers`` done, or (``done=False``) free to be taken again."""
        with exclusive(Path(self.sweep_dir) / LEDGER_LOCK):
            jobs = self._read()
            for j in jobs:
                if j["number"] in numbers:
                    j["done"], j["worker"] = (True, j["worker"]) if done else (False, None)
            self._write(jobs)

    def taken(self) -> int:
        with exclusive(Path(self.sweep_dir) / LEDGER_LOCK):
            return sum(j["worker"] is not None for j in self._read())

    def _read(self) -> list[dict[str, Any]]:
        return list(json.loads((Path(self.sweep_dir) / LEDGER).read_text())["jobs"])

    def _write(self, jobs: list[dict[str, Any]]) -> None:
        atomic_write_text(Path(self.sweep_dir) / LEDGER, json.dumps({"jobs": jobs}, indent=1))
