"""Classify digit images with a trained network.

    python scripts/predict.py RUN_ID digit.png photo.jpg t10k-images-idx3-ubyte.gz
    python scripts/predict.py outputs/runs/<date>/<time>/weights/final.npz digit.png --which best
    python scripts/predict.py models:/digits@champion digit.png

The first argument is a weights ``.npz``, an MLflow run id (its
``weights/final.npz``, or ``best.npz`` with ``--which best``) or a
registered model (``models:/<name>@<alias>`` or ``models:/<name>/<version>``:
the weights it serves). Images may be
any size and format Pillow reads -- dark ink on light paper or light on dark
-- and are framed the MNIST way first; IDX image files give one line per
image. Prints ``<name>  label <d>  p=<probability>`` per image. A file that
cannot be read or an unknown run: one line ``error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from mnist_np import data
from mnist_np.inference import InferenceError, load_images, predict_proba
from mnist_np.nn.weights import load_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="a weights .npz, an MLflow run id, or models:/<name>@<alias>")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...) or IDX image files")
    parser.add_argument("--tracking-uri", default=None,
                        help="store of the run (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--which", choices=("final", "best"), default="final",
                        help="which weights of a run (default: final)")
    args = parser.parse_args(argv)
    try:
        x, names = load_images(args.images)  # first: a bad image fails before MLflow is even imported
        with tempfile.TemporaryDirectory(prefix="mnist-np-predict-") as tmp:
            path = Path(args.weights)
            if not path.is_file():  # a run id or a registered model: only then pay for importing MLflow
                from mnist_np.tracking.logged_model import resolve_weights

                path = resolve_weights(args.weights, args.tracking_uri, args.which, dst_dir=Path(tmp))
            params, config_yaml = load_weights(path)
        proba = predict_proba(params, x, config_yaml)  # (N, 10)
    except (InferenceError, ValueError, data.DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    labels = proba.argmax(axis=1)
    width = max(len(n) for n in names) if names else 0
    for name, label, p in zip(names, labels, proba[range(len(labels)), labels]):
        print(f"{name:<{width}}  label {label}  p={p:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
