"""Continuing a killed sweep: ``python scripts/train.py --multirun resume=<sweep dir | parent run id>``.

The command is rewritten into the sweep's own: its saved overrides
(``multirun.yaml``), its sweep dir, and whatever else the command line adds
(``hydra.sweeper.n_trials=40`` extends a search). The sweep's callback then
reopens the same parent run instead of making one (:data:`SESSION`), and
Hydra's launcher runs the sweep's jobs again, each in its own dir
(``<sweep dir>/<job number>``): a member that had ended is kept as it was,
one that was interrupted resumes from its checkpoint into its own MLflow
run, one that never started runs now (:func:`continued_member`). A guided
search continues the same study instead: its interrupted trials are marked
FAIL and new ones asked until it holds ``n_trials``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from mnist_np.experiment.config.overrides import command_line_overrides, parse_override
from mnist_np.experiment.config.schema import SEARCH_SWEEPER, ConfigError
from mnist_np.experiment.run.results import RunResult
from mnist_np.experiment.run.resume import resume
from mnist_np.experiment.sweep.info import SWEEP_FILE, SweepInfo
from mnist_np.tracking.journal import JOURNAL_FILE, read_journal, read_run_file
from mnist_np.tracking.queries import run_tags
from mnist_np.tracking.uris import tracking_uri_or_default

log = logging.getLogger(__name__)

# Hydra overrides of the saved sweep that describe that one launch, not the sweep.
NOT_REPEATED = ("hydra.sweep.dir", "hydra.mode", "hydra.run.dir", "hydra.job.name")


@dataclass
class ResumedSweep:
    """The command line that continues a sweep, and the sweep's dir; ``done``: the sweep had ended, nothing to
    continue."""

    argv: list[str]
    sweep_dir: Path
    done: bool = False


def resume_command(args: list[str]) -> ResumedSweep | None:
    """For ``--multirun ... resume=<target>``, the sweep's own command line; None for any other command.

    Raises:
        ConfigError: one line -- no such sweep dir or parent run, or a sweep that cannot be resumed.
    """
    overrides = command_line_overrides(args) or []
    targets = [parse_override(o)[1] for o in overrides if parse_override(o)[0] == "resume"]
    if not targets or not ({"-m", "--multirun"} & set(args)):
        return None
    extra = [o for o in overrides if parse_override(o)[0] != "resume"]
    uris = [parse_override(o)[1] for o in extra if parse_override(o)[0] == "mlflow.tracking_uri"]
    sweep_dir = sweep_dir_of(targets[-1], tracking_uri_or_default(uris[-1] if uris else None))
    saved = OmegaConf.load(sweep_dir / "multirun.yaml")
    hydra = [o for o in saved.hydra.overrides.hydra if not parse_override(o)[0].startswith(NOT_REPEATED)]
    argv = ["--multirun", *hydra, *saved.hydra.overrides.task, *extra, f"hydra.sweep.dir={sweep_dir}"]
    info = SweepInfo.load(sweep_dir)
    # A search that ran to its end may still be extended (hydra.sweeper.n_trials=...); a grid is simply over.
    done = bool(info and info.completed) and saved.hydra.sweeper.get("_target_") != SEARCH_SWEEPER
    return ResumedSweep(argv, sweep_dir, done)


def sweep_dir_given(args: list[str]) -> Path | None:
    """The sweep dir a ``--multirun`` command line names with ``hydra.sweep.dir=`` (None: Hydra picks a new one)."""
    if not ({"-m", "--multirun"} & set(args)):
        return None
    given = [parse_override(o)[1] for o in command_line_overrides(args) or []
             if parse_override(o)[0] == "hydra.sweep.dir"]
    if not given or "${" in given[-1]:  # an interpolation: Hydra's to resolve (the sweep's callback locks it then)
        return None
    return Path(given[-1]).expanduser().resolve()


def sweep_dir_of(target: str, tracking_uri: str) -> Path:
    """The sweep dir ``target`` names: the dir itself, or the one its parent run records (tag ``sweep_dir``)."""
    path = Path(target).expanduser()
    if not (path / SWEEP_FILE).is_file():
        if path.exists():
            raise ConfigError(f"resume={target} is not allowed: {path} holds no {SWEEP_FILE}; expected a sweep dir "
                              "or its parent run id")
        try:
            path = Path(run_tags(target, tracking_uri).get("sweep_dir", ""))
        except ValueError as e:
            raise ConfigError(f"resume={target} is not allowed: {e}; expected a sweep dir "
                              "or its parent run id") from None
        if SweepInfo.load(path) is None:
            raise ConfigError(f"resume={target} is not allowed: run {target} is not a sweep's parent with "
                              "its dir on this machine")
    if not (path / "multirun.yaml").is_file():
        raise ConfigError(f"resume={target} is not allowed: {path} holds no multirun.yaml")
    return path.resolve()


def continued_member(output_dir: Path) -> RunResult | None:
    """Member ``output_dir`` of a continued sweep, if it had started: kept as it ended, or resumed.

    Decided from the member's own dir (its journal says how its run ended;
    MLflow may not have heard): FINISHED or FAILED by itself (diverged, an
    invalid config) is kept and not run again; KILLED (Ctrl-C), no ending
    at all (kill -9, node lost) or a failure marked ``retry`` (its data or
    store was missing: :mod:`mnist_np.experiment.sweep.members`) resumes
    from its newest checkpoint, if any, into the same MLflow run. None: the
    member never started; it runs now.
    """
    run = read_run_file(output_dir)
    journal = output_dir / JOURNAL_FILE
    state = read_journal(journal) if journal.is_file() else None
    end = state.end if state is not None else None
    began = bool(run) or (state is not None and state.start is not None)  # a run file may not have been written
    if began and (end is None or end.get("status") == "KILLED" or end.get("retry")):
        # Killed, interrupted, or failed for want of something outside it (its data, its store):
        # trained on, into its run -- also one killed before it wrote its run file down (resume finds it).
        log.info("continuing sweep member %s (run %s) from its newest checkpoint", output_dir,
                 run.get("run_id", "not written down"))
        return resume(str(output_dir), sweep_member=True)
    if not run or end is None:
        return None  # never started (or ended before its record reached MLflow): it runs now
    log.info("sweep member %s (run %s) had ended %s; kept", output_dir, run["run_id"], end.get("status"))
    summary = output_dir / "summary.json"
    metrics = (json.loads(summary.read_text())["metrics"] if end.get("status") == "FINISHED" and summary.is_file()
               else {})
    return RunResult(run["run_id"], output_dir, metrics)
