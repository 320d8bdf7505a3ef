"""Continuing a killed sweep: ``python scripts/train.py --multirun resume=<sweep dir | parent run id>``.

The command is rewritten into the sweep's own: its saved overrides
(``multirun.yaml``), its sweep dir, and whatever else the command line adds
(``hydra.sweeper.n_trials=40`` extends a search). The sweep's callback then
reopens the same parent run instead of making one (:data:`SESSION`), and
the search sweeper continues the same study. Guided searches resume;
grid sweeps cannot yet (they would train every member again).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from mnist_np.experiment.overrides import command_line_overrides, parse_override
from mnist_np.experiment.schema import SEARCH_SWEEPER, ConfigError
from mnist_np.experiment.sweep_info import SWEEP_FILE, SweepInfo
from mnist_np.tracking.queries import run_tags
from mnist_np.tracking.uris import tracking_uri_or_default

# Hydra overrides of the saved sweep that describe that one launch, not the sweep.
NOT_REPEATED = ("hydra.sweep.dir", "hydra.mode", "hydra.run.dir", "hydra.job.name")


@dataclass
class ResumedSweep:
    """The command line that continues a sweep, and the sweep's dir."""

    argv: list[str]
    sweep_dir: Path


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
    if saved.hydra.sweeper.get("_target_") != SEARCH_SWEEPER:
        raise ConfigError(f"resume={targets[-1]} is not allowed: {sweep_dir} is a grid sweep, which cannot be resumed yet "
                          "(it would train every member again); expected a guided search's (+sweep=optuna) sweep dir or parent run id")
    hydra = [o for o in saved.hydra.overrides.hydra if not parse_override(o)[0].startswith(NOT_REPEATED)]
    return ResumedSweep(["--multirun", *hydra, *saved.hydra.overrides.task, *extra, f"hydra.sweep.dir={sweep_dir}"], sweep_dir)


def sweep_dir_of(target: str, tracking_uri: str) -> Path:
    """The sweep dir ``target`` names: the dir itself, or the one its parent run records (tag ``sweep_dir``)."""
    path = Path(target).expanduser()
    if not (path / SWEEP_FILE).is_file():
        if path.exists():
            raise ConfigError(f"resume={target} is not allowed: {path} holds no {SWEEP_FILE}; expected a sweep dir or its parent run id")
        try:
            path = Path(run_tags(target, tracking_uri).get("sweep_dir", ""))
        except ValueError as e:
            raise ConfigError(f"resume={target} is not allowed: {e}; expected a sweep dir or its parent run id") from None
        if SweepInfo.load(path) is None:
            raise ConfigError(f"resume={target} is not allowed: run {target} is not a sweep's parent with its dir on this machine")
    if not (path / "multirun.yaml").is_file():
        raise ConfigError(f"resume={target} is not allowed: {path} holds no multirun.yaml")
    return path.resolve()
