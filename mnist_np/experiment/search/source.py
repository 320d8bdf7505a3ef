"""A guided search's trials, asked one at a time by workers at their own pace: Optuna's ask-and-tell over its storage.

The asynchronous search (:mod:`mnist_np.experiment.sweep.workers`): a worker
whose trial ended asks the stored study for the next one at once -- the
sampler sees every trial told so far, from every worker -- runs it as a
member, and tells the study how it ended, from the member's output dir, as
the batch-synchronous search does. The ask happens under a lock in the
sweep dir, so that workers on several nodes never ask more than
``n_trials`` trials between them (counting the RUNNING ones).

Each worker samples with its own seed (``hydra.sweeper.seed`` plus its
number): with one seed, two workers asking at the same moment before the
sampler has any trial to condition on would draw the same parameters.
A worker remembers its trial in ``workers/<k>.json``; one that Slurm
requeued runs that trial again first (its member resumes from its checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mnist_np.common.files import atomic_write_text
from mnist_np.common.locks import exclusive
from mnist_np.experiment.search.outcome import tell
from mnist_np.experiment.search.space import as_override
from mnist_np.experiment.search.study import SearchSettings, load_study
from mnist_np.experiment.sweep.info import SweepInfo
from mnist_np.experiment.sweep.launch import member_dir, settle_member
from mnist_np.experiment.sweep.workers import WORKERS_DIR

ASK_LOCK = "ask.lock"


def counted(study: Any) -> int:
    """Trials that count toward ``n_trials``: finished ones (COMPLETE, PRUNED, FAIL) and the ones running now."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))


@dataclasses.dataclass
class StudySource:
    """The trials of a stored study (a :class:`~mnist_np.experiment.sweep.workers.JobSource`), asked until
    ``n_trials``."""

    settings: SearchSettings
    distributions: dict[str, Any]
    fixed: list[str]
    sweep_dir: str

    def __post_init__(self) -> None:
        self._studies: dict[int, Any] = {}  # per worker: its own sampler (lanes share this object, in threads)

    def start(self, worker: int) -> None:
        seed = self.settings.seed + worker if self.settings.seed is not None else None
        self._studies[worker] = load_study(dataclasses.replace(self.settings, seed=seed))

    def next(self, worker: int) -> tuple[list[str], int] | None:
        """The trial ``worker`` was running when it was requeued, else a new trial while fewer than ``n_trials``
        count."""
        from optuna.trial import TrialState

        study = self._studies[worker]
        with exclusive(Path(self.sweep_dir) / ASK_LOCK):
            mine = self._current(worker)
            if mine is not None:
                frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == mine), None)
                if frozen is not None and frozen.state == TrialState.RUNNING:
                    return self._job(frozen.params), frozen.number
            if counted(study) >= self.settings.n_trials:
                return None
            trial = study.ask(self.distributions)
            self._remember(worker, trial.number)
        return self._job(trial.params), trial.number

    def done(self, worker: int, number: int, result: Any) -> None:
        tell(self._studies[worker], self.settings, number, member_dir(Path(self.sweep_dir), number))
        self._remember(worker, None)

    def settle(self, error: str) -> None:
        """Trials still RUNNING when the workers stopped: their members settled from their dirs, then told (FAIL unless
        the member finished)."""
        from optuna.trial import TrialState

        study = load_study(self.settings)
        info = SweepInfo.load(self.sweep_dir)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            output_dir = member_dir(Path(self.sweep_dir), t.number)
            if info is not None:
                settle_member(info, t.number, self._job(t.params), output_dir, None, error)
            tell(study, self.settings, t.number, output_dir)

    def taken(self) -> int:
        return len(load_study(self.settings).get_trials(deepcopy=False))

    def _job(self, params: dict[str, Any]) -> list[str]:
        return [*self.fixed, *(as_override(k, v) for k, v in params.items())]

    def _current(self, worker: int) -> int | None:
        path = Path(self.sweep_dir) / WORKERS_DIR / f"{worker}.json"
        return json.loads(path.read_text()).get("trial") if path.is_file() else None

    def _remember(self, worker: int, number: int | None) -> None:
        atomic_write_text(Path(self.sweep_dir) / WORKERS_DIR / f"{worker}.json", json.dumps({"trial": number}))
