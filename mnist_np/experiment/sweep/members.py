"""A sweep member, in its own process: the run, handed what the sweep says of it, and its record whatever stops it.

:func:`run_member` is what ``scripts/train.py`` runs for each job of a
``--multirun``: it describes the member to the run (:class:`Member`: its
name, tags, a search's stop rule, and how a continued sweep keeps or
resumes it) and records a member that stops before its run exists -- its
data cannot be obtained, its store does not answer, its config is
invalid, any other error -- as a FAILED child (see
:mod:`~mnist_np.experiment.sweep.records`).
"""

from __future__ import annotations

import logging
import math
from typing import Callable

from omegaconf import DictConfig

from mnist_np.common import locks
from mnist_np.common.errors import error_line
from mnist_np.experiment.config.schema import ConfigError
from mnist_np.experiment.run.context import HydraContext, hydra_context
from mnist_np.experiment.run.member import Member
from mnist_np.experiment.run.preemption import requeued
from mnist_np.experiment.run.single import run
from mnist_np.experiment.sweep.info import SweepInfo, member_run_name
from mnist_np.experiment.sweep.records import record_failure
from mnist_np.experiment.sweep.resume import continued_member
from mnist_np.tracking.uris import TrackingUnavailable
from mnist_np.train.loop import StopRule

log = logging.getLogger(__name__)
# A guided search's stop rule for member ``job_num`` of the sweep (None: the member trains to its end).
StopRuleFor = Callable[[SweepInfo, int], "StopRule | None"]


def run_member(cfg: DictConfig, stop_rule_for: StopRuleFor | None = None) -> float:
    """Run one sweep member; whatever stops it, it leaves a record. Returns what sweepers maximise (NaN: failed).

    ``stop_rule_for``: the guided search's (:mod:`mnist_np.experiment.search.member`), which sweeps know nothing of.
    """
    try:
        ctx = hydra_context()
        info = SweepInfo.load(ctx.sweep_dir) if ctx.sweep_dir else None
        return run(cfg, member=membership(ctx, info, stop_rule_for)).val_accuracy
    except ConfigError as e:
        log.error("invalid config: %s", e)
        record_failed_member(cfg, f"invalid config: {e}", retry=False, base_name="invalid-config")
    except (locks.LockHeld, locks.LockUnsupported) as e:
        log.error("%s", e)  # another process owns the member's dir: it is that process's to record
    except Exception as e:  # noqa: BLE001 -- a member's failure is recorded; the sweep goes on
        if _expected(e):  # its message says what to do (a DataError lists the sources it tried)
            log.error("sweep member failed: %s: %s", type(e).__name__, e)
        else:
            log.exception("sweep member failed: %s", error_line(e))
        # A run that existed has closed itself FAILED already (its journal says so): then this does nothing.
        record_failed_member(cfg, f"{type(e).__name__}: {e}", retry=True)
    return math.nan


def _expected(e: Exception) -> bool:
    """Failures the user can act on from their one line (no traceback in the log)."""
    from mnist_np.data import DataError
    from mnist_np.train.loop import TrainingDiverged

    return isinstance(e, (DataError, TrackingUnavailable, TrainingDiverged))


def record_failed_member(cfg: DictConfig | None, reason: str, retry: bool, base_name: str | None = None) -> None:
    """This process's sweep member stopped with ``reason``: record it from its output dir (see
    :func:`record_failure`)."""
    ctx = hydra_context()
    info = SweepInfo.load(ctx.sweep_dir) if ctx.sweep_dir else None
    if info is None or ctx.output_dir is None or ctx.job_num is None:
        return
    record_failure(info, ctx.job_num, ctx.overrides, ctx.output_dir, cfg, reason, retry, base_name)


def membership(ctx: HydraContext, info: SweepInfo | None, stop_rule_for: StopRuleFor | None = None) -> Member | None:
    """What the sweep hands this job's run: its name and tags, a search's stop rule, and how to continue it."""
    if info is None or ctx.job_num is None:
        return None
    job_num, overrides = ctx.job_num, list(ctx.overrides)
    return Member(
        job_num,
        tags=info.member_tags(job_num),
        name=lambda base, explicit: member_run_name(base, overrides, info.swept, explicit_base=explicit),
        stop_rule=stop_rule_for(info, job_num) if stop_rule_for is not None else None,
        # A continued sweep's member, or one Slurm started again, may have started before: kept, or resumed.
        continued=continued_member if (info.resumes or requeued()) else None,
    )
