"""A member of any ``--multirun``, as ``scripts/train.py`` runs it: the sweep's member, plus a search's trial.

The top of the experiment layers: a grid's member is the sweep layer's
(:func:`mnist_np.experiment.sweep.members.run_member`); a guided search's
member also reports to its trial after every epoch and stops when pruned
(:func:`mnist_np.experiment.search.trial.trial_stop_rule`), which the sweep
layer, below the search, hands the run without knowing what it is.
"""

from __future__ import annotations

from omegaconf import DictConfig

from mnist_np.experiment.search.trial import trial_stop_rule
from mnist_np.experiment.sweep import members


def run_member(cfg: DictConfig) -> float:
    """Run this job as a sweep member (a trial, in a guided search); NaN when it failed (it leaves a record)."""
    return members.run_member(cfg, stop_rule_for=trial_stop_rule)
