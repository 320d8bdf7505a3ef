"""What a sweep may hand a run: the one interface between a single run and the sweeps and searches above it.

A run knows nothing of sweeps: the sweep layer (and the guided search
above it) describe a member as a :class:`Member` and pass it to
:func:`mnist_np.experiment.run.single.run`, which names and tags the run
with it, lets its stop rule end the training early, and asks it first
whether the member had started before (a continued sweep, a Slurm requeue).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mnist_np.experiment.run.results import RunResult
from mnist_np.train.loop import StopRule

PRUNED = "pruned"  # the stop reason a guided search's pruner gives (FitResult.stop_reason): the run records it


@dataclass
class Member:
    """A run as member ``job_num`` of a sweep.

    Attributes:
        job_num: the member's Hydra job number.
        tags: the sweep's tags for the run (its parent run, its job number, its trial).
        name: the member's run name, from the run's own (``name(base, explicit_base)``).
        stop_rule: told every epoch's metrics; a reason (e.g. :data:`PRUNED`) ends the training there.
        continued: for a member that may have started before (a continued sweep, a requeued
            job): its result, kept or resumed from its output dir; None when it never started.
    """

    job_num: int
    tags: dict[str, str] = field(default_factory=dict)
    name: Callable[[str, bool], str] = lambda base, explicit: base
    stop_rule: StopRule | None = None
    continued: Callable[[Path], RunResult | None] | None = None
