"""Score a trained network on its dataset's test set.

    python scripts/evaluate.py RUN_ID
    python scripts/evaluate.py outputs/runs/<date>/<time>/weights/best.npz

The first argument is a weights ``.npz`` or an MLflow run id (its
``weights/final.npz``, or ``best.npz`` with ``--which best``). The dataset
(``data.name``, and ``data.dir`` / ``data.cache_dir`` when set) comes from
the config embedded in the weights file. Prints the accuracy, the accuracy
per class and the confusion matrix. An unknown run, an unreadable file or
missing data: one line ``error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from mnist_np import data
from mnist_np.inference import InferenceError, evaluate, format_report, load_test_set, parse_config
from mnist_np.nn.weights import load_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="a weights .npz or an MLflow run id")
    parser.add_argument("--tracking-uri", default=None,
                        help="store of the run (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--which", choices=("final", "best"), default="final",
                        help="which weights of a run (default: final)")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="mnist-np-evaluate-") as tmp:
            path = Path(args.weights)
            from_run = not path.is_file()
            if from_run:  # a run id: only then pay for importing MLflow
                from mnist_np.tracking.logged_model import resolve_weights

                path = resolve_weights(args.weights, args.tracking_uri, args.which, dst_dir=Path(tmp))
            params, config_yaml = load_weights(path)
        config = parse_config(config_yaml)
        x, y, class_names = load_test_set(config, params["W1"].dtype)
        result = evaluate(params, x, y, config_yaml)
    except (InferenceError, ValueError, data.DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = (config.get("data") or {}).get("name") or "mnist"
    print(f"weights {args.weights}" + (f" (run, {args.which}.npz)" if from_run else ""))
    print(f"test set {name}: {len(y)} images")
    print(format_report(result, class_names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
