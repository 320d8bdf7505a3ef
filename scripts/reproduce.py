"""Re-train a run from its saved config and check that the result is bit-identical.

    python scripts/reproduce.py RUN_ID [--tracking-uri URI]
    python scripts/reproduce.py --from-dir outputs/runs/2026-11-25/10-00-00.123456

The saved config is untrusted data: it is checked against the schema before
use. The reproduction is a new MLflow run tagged ``reproduces=<original>``.
Prints a verdict table; exit status 0 when weights and every per-epoch
metric are identical, 1 when anything differs (naming the first difference
and any difference in config, numpy, BLAS or thread count), 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_id", nargs="?", help="the MLflow run to reproduce")
    parser.add_argument("--from-dir", type=Path, help="reproduce from a run's output dir instead")
    parser.add_argument("--tracking-uri",
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else the project's mlflow.db)")
    parser.add_argument("--output-dir", type=Path,
                        help="where the reproduction's files go (default: outputs/runs/<date>/<time>)")
    args = parser.parse_args()
    if (args.run_id is None) == (args.from_dir is None):
        parser.error("give either a RUN_ID or --from-dir DIR")

    from mnist_np.experiment.config.compose import load_run_config
    from mnist_np.experiment.config.schema import ConfigError, register_configs
    from mnist_np.experiment.run.reproduce import compare, record_from_dir, record_from_mlflow
    from mnist_np.experiment.run.single import run
    from mnist_np.tracking.uris import tracking_uri_or_default

    register_configs()
    uri = tracking_uri_or_default(args.tracking_uri)
    try:
        with tempfile.TemporaryDirectory(prefix="reproduce-") as tmp:
            if args.from_dir:
                original = record_from_dir(args.from_dir)
                what = str(args.from_dir)
            else:
                original = record_from_mlflow(args.run_id, uri, Path(tmp))
                what = args.run_id
        cfg = load_run_config(original.config_yaml, source=f"{what}: config/config.yaml")
    except (ConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg.mlflow.tracking_uri = uri
    cfg.resume = None
    print(f"reproducing {original.source} ...", flush=True)
    result = run(cfg, output_dir=args.output_dir, overrides=[], extra_tags={"reproduces": what})
    verdict = compare(original, record_from_dir(result.output_dir), used_config_yaml=original.config_yaml)
    print(verdict.render())
    print(f"new run: {result.run_id} ({result.output_dir})")
    return 0 if verdict.identical else 1


if __name__ == "__main__":
    sys.exit(main())
