"""How a search's trials end: told to the study from their members' output dirs, whatever launcher ran them.

A ``summary.json`` with finite objectives is COMPLETE (PRUNED when it says
``pruned_at_epoch``); anything else -- a diverged loss, an invalid value, an
exception, a process killed from outside -- is FAIL, and the study goes on
until it holds ``n_trials`` finished trials.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mnist_np.experiment.search.study import SearchSettings
from mnist_np.experiment.sweep.info import OBJECTIVES
from mnist_np.tracking.conventions import PRUNED_TAG


def finished(study: Any) -> int:
    """Trials that count toward ``n_trials``: COMPLETE, PRUNED or FAIL."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))


def fail_interrupted(study: Any) -> list[int]:
    """Mark FAIL the trials a killed search left RUNNING (their members died with it); returns their numbers."""
    from optuna.trial import TrialState

    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for number in running:
        study.tell(number, state=TrialState.FAIL)
    return running


def tell(study: Any, settings: SearchSettings, trial: Any, output_dir: Path) -> str:
    """Tell Optuna how ``trial`` ended, from its member's ``summary.json``; returns the state's name."""
    from optuna.trial import TrialState

    outcome = trial_outcome(output_dir, settings)
    if outcome is None:
        study.tell(trial, state=TrialState.FAIL)
        return "FAIL"
    values, pruned = outcome
    if pruned:
        study.tell(trial, state=TrialState.PRUNED)
        return "PRUNED"
    study.tell(trial, values)
    return "COMPLETE"


def trial_outcome(output_dir: Path, settings: SearchSettings) -> tuple[list[float], bool] | None:
    """``(objective values, pruned)`` of a member that finished, None for one that failed (or left no summary)."""
    path = output_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
        values = [float(summary["metrics"][OBJECTIVES[o]]) for o in settings.objectives]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(math.isfinite(v) for v in values):
        return None
    return values, bool(summary.get(PRUNED_TAG))
