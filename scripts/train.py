"""Train one network (or a sweep of them with --multirun) from the Hydra config.

    python scripts/train.py model.hidden_size=256 optimizer.lr=0.05 trainer.batch_size=64 trainer.epochs=5
    python scripts/train.py --multirun model.hidden_size=64,128,256 optimizer.lr=0.01,0.1
    python scripts/train.py --multirun +sweep=optuna
    python scripts/train.py --multirun resume=<sweep dir or parent run id>   # continue a killed sweep or search
    python scripts/train.py +experiment=seed_baseline
    # what it would run:
    python scripts/train.py --multirun model.hidden_size=64,128 optimizer.lr=0.01,0.1,0.3 dry_run=true

A thin shell over :func:`mnist_np.experiment.run.single.run`: it checks the command
line, lets Hydra compose the config, and turns the errors a user can fix into
one line on stderr (exit status 2 for a bad config, 1 for a failed run or a
sweep with failed members). In a sweep, a member that fails is recorded as
a FAILED child run and the sweep goes on. With ``dry_run=true`` nothing
runs: the command says what it would launch and checks every member
(:mod:`mnist_np.experiment.search.dry_run`), before Hydra makes any dir.
"""

from __future__ import annotations

from mnist_np import speedups

speedups.arm_fast_exit()  # first: the last exit handler to run (see mnist_np.speedups)

import logging  # noqa: E402
import sys  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from mnist_np.common.paths import CONF_DIR  # noqa: E402
from mnist_np.experiment.config.compose import check_overrides  # noqa: E402
from mnist_np.experiment.config.schema import ConfigError, register_configs  # noqa: E402

register_configs()
log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one training; returns the best validation accuracy (what sweepers maximise), NaN if it failed."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mnist_np.common.locks import LockHeld, LockUnsupported
    from mnist_np.data import DataError
    from mnist_np.experiment.run.single import run
    from mnist_np.tracking.uris import TrackingUnavailable
    from mnist_np.train.loop import TrainingDiverged

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        from mnist_np.experiment.search.member import run_member

        return run_member(cfg)  # whatever stops a member, it leaves a record; the sweep goes on
    try:
        return run(cfg).val_accuracy
    except ConfigError as e:
        print(f"error: invalid config: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except (LockHeld, LockUnsupported) as e:  # another process writes that run: nothing was touched
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except (DataError, TrainingDiverged, TrackingUnavailable) as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def cli() -> int:
    """The command: check the command line, run Hydra, and turn the outcome into an exit status."""
    from mnist_np.common.locks import LockHeld, LockUnsupported
    from mnist_np.experiment.config.compose import compose_sweep
    from mnist_np.experiment.run.results import RunInterrupted
    from mnist_np.experiment.search.dry_run import dry_run, dry_run_requested
    from mnist_np.experiment.search.sweeper import check_search
    from mnist_np.experiment.sweep.resume import resume_command, sweep_dir_given
    from mnist_np.experiment.sweep.session import SESSION

    try:
        if dry_run_requested(sys.argv[1:]):  # before anything that writes: the sweep's lock, Hydra's dirs
            return dry_run(sys.argv[1:], sys.stdout, sys.stderr)
        resumed = resume_command(sys.argv[1:])
        if resumed is not None:
            SESSION.hold(resumed.sweep_dir)  # before anything: a sweep whose driver still runs is refused
        if resumed is not None and resumed.done:
            print(f"sweep {resumed.sweep_dir} already ran to its end; nothing to resume")
            return 0
        if resumed is not None:  # `--multirun resume=...`: the sweep's own command line, in its own dir
            sys.argv[1:] = resumed.argv
            SESSION.resume_dir = resumed.sweep_dir
        elif (given := sweep_dir_given(sys.argv[1:])) is not None:
            SESSION.hold(given)  # a new sweep into a dir another sweep is writing
        check_overrides(sys.argv[1:])
        check_search(compose_sweep(sys.argv[1:]))
    except ConfigError as e:
        print(f"error: invalid config: {e}", file=sys.stderr)
        return 2
    except (LockHeld, LockUnsupported) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    try:
        main()
    except KeyboardInterrupt as e:
        SESSION.finish("interrupted by the user (KeyboardInterrupt)", status="KILLED")
        if not isinstance(e, RunInterrupted):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 130  # the shell's status for a Ctrl-C
    except SystemExit as e:  # our one-line errors, or Hydra's
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        # Only does something when the sweep stopped before Hydra's on_multirun_end.
        SESSION.finish("the sweep stopped early (see its log)")
        SESSION.release()
    error = SESSION.error()
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    speedups.exit_fast(cli())
