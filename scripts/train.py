"""Train one network (or a sweep of them with --multirun) from the Hydra config.

    python scripts/train.py model.hidden_size=256 optimizer.lr=0.05 trainer.batch_size=64 trainer.epochs=5
    python scripts/train.py --multirun model.hidden_size=64,128,256 optimizer.lr=0.01,0.1
    python scripts/train.py --multirun +sweep=optuna
    python scripts/train.py +experiment=seed_baseline

A thin shell over :func:`mnist_np.runner.run`: it checks the command line,
lets Hydra compose the config, and turns the errors a user can fix into one
line on stderr (exit status 2 for a bad config, 1 for a failed run or a
sweep with failed members). In a sweep, a member that fails is recorded as
a FAILED child run and the sweep goes on.
"""

from __future__ import annotations

import logging
import math
import sys

import hydra
from omegaconf import DictConfig

from mnist_np.config import CONF_DIR, ConfigError, check_overrides, register_configs

register_configs()
log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one training; returns the best validation accuracy (what sweepers maximise), NaN if it failed."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mnist_np import sweep
    from mnist_np.data import DataError
    from mnist_np.runner import run
    from mnist_np.training import TrainingDiverged

    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return run(cfg).val_accuracy
    except ConfigError as e:
        if in_sweep:
            log.error("invalid config: %s", e)
            sweep.record_invalid_member(cfg, str(e))
            return math.nan
        print(f"error: invalid config: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as e:
        # Imported here, not above: run() imports MLflow while the data loads (see runner.run).
        from mnist_np.tracking import TrackingUnavailable

        if isinstance(e, (DataError, TrainingDiverged, TrackingUnavailable)):
            log.error("%s", e)
            if in_sweep:
                return math.nan
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        if not in_sweep:
            raise
        # The member's run is already FAILED with its reason; the sweep goes on.
        log.exception("sweep member failed")
        return math.nan


def cli() -> int:
    """The command: check the command line, run Hydra, and turn the outcome into an exit status."""
    try:
        check_overrides(sys.argv[1:])
    except ConfigError as e:
        print(f"error: invalid config: {e}", file=sys.stderr)
        return 2

    from mnist_np import sweep
    from mnist_np.runner import RunInterrupted

    try:
        main()
    except KeyboardInterrupt as e:
        sweep.finish_open_sweep("interrupted by the user (KeyboardInterrupt)", status="KILLED")
        if not isinstance(e, RunInterrupted):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 130  # the shell's status for a Ctrl-C
    except SystemExit as e:  # our one-line errors, or Hydra's
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        # Only does something when the sweep stopped before Hydra's on_multirun_end.
        sweep.finish_open_sweep("the sweep stopped early (see its log)")
    if sweep.unsynced is not None:
        print(f"error: the sweep is over but MLflow was unreachable ({sweep.unsynced}); its runs are in their "
              "output dirs: upload them with python scripts/sync.py <sweep dir>", file=sys.stderr)
        return 1
    summary = sweep.last_summary
    if summary is not None and not summary.ok:
        print(f"error: {summary.failed} of {summary.total} sweep members failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from mnist_np.procs import exit_now

    # Without the interpreter's teardown: a second saved on every run (see exit_now).
    exit_now(cli())
