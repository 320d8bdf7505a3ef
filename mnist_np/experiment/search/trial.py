"""A search member's side of its trial: its validation metric reported after every epoch, and pruning.

The member's trial is the one whose number is its Hydra job number (the
sweeper launches trial ``n`` as job ``n``). It reports through the study's
storage, so it works from whatever process or node runs the member, and
when the pruner says so the member stops training there -- and goes on to
score, save and log what it has, like any run that stopped early.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from mnist_np.common.errors import error_line
from mnist_np.experiment.run.member import PRUNED
from mnist_np.experiment.search.study import SearchSettings, load_study
from mnist_np.experiment.sweep.info import SweepInfo
from mnist_np.train.loop import StopRule

log = logging.getLogger(__name__)


def trial_stop_rule(sweep: SweepInfo | None, job_num: int | None) -> StopRule | None:
    """For a member of a guided search: a stop rule that reports each epoch to its trial and says when it is pruned.

    None for anything else (a single run, a grid sweep's member) and for
    searches with several objectives (Optuna prunes single-objective studies only).
    """
    if sweep is None or sweep.search is None or job_num is None:
        return None
    settings = SearchSettings(**sweep.search)
    metric = settings.reported
    if metric is None:
        return None
    trial = _trial(load_study(settings), job_num)
    log.info("search member: trial %d of study %r in %s, reporting %s", job_num, settings.study_name, settings.storage,
             metric)
    failed: list[str] = []

    def report(epoch: int, metrics: dict[str, float]) -> str | None:
        value = metrics.get(metric, math.nan)
        if failed or value != value:  # NaN: nothing to report (the run fails on its own)
            return None
        try:
            trial.report(value, epoch)
            return PRUNED if trial.should_prune() else None
        except Exception as e:  # noqa: BLE001 -- the storage is the search's, the training is the member's own
            failed.append(error_line(e))
            log.warning("cannot report to trial %d (%s); this member trains to the end unpruned", job_num, failed[0])
            return None

    return report


def _trial(study: Any, number: int) -> Any:
    """The live trial ``number`` of ``study``, as a member in another process sees it."""
    import optuna

    frozen = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if frozen is None:
        raise ValueError(f"study {study.study_name!r} has no trial {number}")
    # Optuna has no public way to get a live Trial by its number from another process:
    # FrozenTrial._trial_id is the storage's id, which optuna.trial.Trial takes.
    return optuna.trial.Trial(study, frozen._trial_id)
