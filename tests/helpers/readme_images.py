"""Make the README's pictures from real runs: the MLflow compare view and a confusion matrix.

    .venv/bin/python tests/helpers/readme_images.py                 # writes docs/images/*.png
    .venv/bin/python tests/helpers/readme_images.py --out /tmp/img  # somewhere else

Starts a throwaway ``mlflow server`` (temp dir, loopback), runs a small real
sweep against it -- ``model.hidden_size=64,256 optimizer.lr=0.03,0.1``, 5
epochs on the full training split -- opens the compare page of its members
in headless Chromium (showing only what differs, with validation and test
accuracy in the parallel-coordinates plot) and saves it, then downloads the
best member's ``plots/confusion_matrix.png`` from the server. Needs the
``test`` extra (Playwright) and a system Chromium (see ``tests/helpers/browser.py``);
takes about two minutes on two cores.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from browser import MlflowUI, chromium  # the test helpers beside this file (it runs as a script)
from servers import start_mlflow_server

from mnist_np.common.paths import PROJECT_ROOT
from mnist_np.experiment.sweep.info import SweepInfo
from mnist_np.experiment.sweep.summary import summarize
from mnist_np.tracking.queries import fetch_run, runs_to_compare

SWEEP = ("model.hidden_size=64,256", "optimizer.lr=0.03,0.1")
SWEPT = ["model.hidden_size", "optimizer.lr"]
EXPERIMENT = "mnist-np"  # what a user's UI shows
MAX_BYTES = 300_000  # committed pictures stay small


def shrink_png(path: Path) -> None:
    """Re-save as a 256-colour palette PNG: a UI screenshot has few colours, so it looks the same at a third of the
    size."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def run_sweep(url: str, sweep_dir: Path, epochs: int) -> SweepInfo:
    """The example sweep, as a user would run it, logged to the server at ``url``."""
    cmd = [
        sys.executable, str(PROJECT_ROOT / "scripts" / "train.py"), "--multirun", *SWEEP,
        f"trainer.epochs={epochs}", "trainer.progress=false",
        f"mlflow.tracking_uri={url}", f"mlflow.experiment_name={EXPERIMENT}", f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the sweep failed (status {proc.returncode}):\n{proc.stderr[-3000:]}")
    info = SweepInfo.load(sweep_dir)
    if info is None:
        raise RuntimeError(f"the sweep left no {sweep_dir}/mlflow_sweep.json")
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "images", help="where the PNGs go")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per sweep member")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    with (tempfile.TemporaryDirectory(prefix="mnist-np-readme-") as tmp,
          start_mlflow_server(Path(tmp) / "server") as server):
        print(f"mlflow server at {server.url}; running the sweep {' '.join(SWEEP)} ...", flush=True)
        info = run_sweep(server.url, Path(tmp) / "sweep", args.epochs)
        _, members = runs_to_compare(server.url, info.parent_run_id)
        summary = summarize(members, SWEPT)
        if summary.best is None or summary.failed:
            raise RuntimeError(f"{summary.failed} of {summary.total} members failed; no pictures made")
        # Columns in sweep order (job 0 first), as the table in the README reads.
        members.sort(key=lambda r: int(r["tags"].get("sweep_job_num", 0)))
        experiment_id = server.experiment_id(EXPERIMENT)

        with chromium() as browser:
            # Tall enough for the whole page: its sections scroll inside a panel, so a
            # screenshot can only show what fits in the viewport.
            page = browser.new_page(viewport={"width": 1240, "height": 2200})
            ui = MlflowUI(page, server.url)
            ui.compare(experiment_id, [r["run_id"] for r in members], ["val_accuracy", "test_accuracy"])
            ui.select_metrics_in_plot(["val_accuracy", "test_accuracy"])
            ui.show_diff_only()
            page.wait_for_timeout(1000)  # the plot redraws after the selection changes
            compare_png = ui.screenshot(args.out / "mlflow-compare.png",
                                        top=page.get_by_text("Comparing", exact=False).first,
                                        bottom=ui.section("Metrics"), margin=6)

        best = summary.best
        fetched = fetch_run(best["run_id"], server.url, Path(tmp) / "best", artifacts=("plots/confusion_matrix.png",))
        confusion_png = args.out / "confusion-matrix.png"
        shutil.copyfile(fetched["files"]["plots/confusion_matrix.png"], confusion_png)

    shrink_png(compare_png)  # the plot is copied byte for byte, as the run logged it
    for path in (compare_png, confusion_png):
        size = path.stat().st_size
        print(f"{path}: {size / 1000:.0f} KB")
        if size > MAX_BYTES:
            print(f"warning: {path.name} is over {MAX_BYTES // 1000} KB", file=sys.stderr)
    print(f"best member {best['name']}: val_accuracy {best['val_accuracy']:.4f}, test_accuracy "
          f"{best['test_accuracy']:.4f} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
