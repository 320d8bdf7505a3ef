"""Train one network (or a sweep of them with --multirun) from the Hydra config.

    python scripts/train.py model.hidden_size=256 optimizer.lr=0.05 trainer.batch_size=64 trainer.epochs=5
    python scripts/train.py --multirun model.hidden_size=64,128,256 optimizer.lr=0.01,0.1
    python scripts/train.py +experiment=seed_baseline

A thin shell over :func:`mnist_np.runner.run`: it checks the command line,
lets Hydra compose the config, and turns the errors a user can fix into one
line on stderr (exit status 2 for a bad config, 1 for a failed run).
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from mnist_np.config import CONF_DIR, ConfigError, check_overrides, register_configs, register_resolvers

register_configs()
register_resolvers()
log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one training; returns the best validation accuracy (what sweepers maximise)."""
    from mnist_np.data import DataError
    from mnist_np.runner import run
    from mnist_np.training import TrainingDiverged

    try:
        return run(cfg).val_accuracy
    except ConfigError as e:
        print(f"error: invalid config: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except (DataError, TrainingDiverged) as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    try:
        check_overrides(sys.argv[1:])
    except ConfigError as e:
        print(f"error: invalid config: {e}", file=sys.stderr)
        sys.exit(2)
    main()
