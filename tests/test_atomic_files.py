"""Files that another process or a later command reads are never written in place.

A reader -- a resumed sweep deciding a member's fate from ``summary.json``,
the guided search telling a trial, ``resume=`` reading a config -- must never
meet half a file, even when the writer is killed mid-write. Every such file
goes through the package's one atomic writer (a temporary file, renamed).
Checked on every file a real run opens, through Python's audit hook on
``open``; the figures are drawn in-process here (no forked children) so
that the hook sees them too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, TRAIN_SCRIPT, small_overrides
from mnist_np.experiment.config.compose import compose
from mnist_np.experiment.run.single import run

# Appended to, never replaced: a torn last line is skipped by their readers. The lock file is the lock itself.
APPENDED = {"mlflow_journal.jsonl", "metrics.jsonl", "train.log", "run.lock"}
_opens: list[tuple[str, str]] = []  # (path, mode) of every open for writing while recording


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _recording and isinstance(args[0], (str, bytes, os.PathLike)):
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
        if writing:
            _opens.append((os.fsdecode(path), str(mode if mode is not None else flags)))


_recording = False
sys.addaudithook(_audit)


@pytest.mark.fault("training faults", "atomic")
def test_a_run_writes_every_file_it_replaces_atomically(tracking_uri: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    global _recording
    monkeypatch.setenv("MNIST_NP_SPEEDUPS", "-figures_in_background")  # figures in this process, where the hook is
    out = tmp_path / "run"
    cfg = compose(small_overrides(tracking_uri, "mlflow.log_plots=true", "mlflow.log_system_metrics=false"))
    _opens.clear()
    _recording = True
    try:
        run(cfg, output_dir=out)
    finally:
        _recording = False
    mine = [(Path(p), mode) for p, mode in _opens if Path(p).resolve().is_relative_to(out.resolve())]
    names = {p.relative_to(out).as_posix() for p, _ in mine}
    # The run did write what later commands read...
    for name in ("summary.json", "environment.json", "mlflow_run.json", "config/config.yaml", "weights/final.npz",
                 "checkpoints/epoch_0002.npz", "plots/confusion_matrix.png"):
        assert any(n.endswith(".tmp") and Path(n).parent == Path(name).parent
                   for n in names), f"{name}: no temporary file"
        assert (out / name).is_file(), name
    # ...and opened nothing in place but the files it appends to.
    in_place = sorted({p.relative_to(out).as_posix() for p, mode in mine
                       if not p.name.endswith(".tmp") and not (p.name in APPENDED and "a" in mode)
                       and p.name != "run.lock"})
    assert in_place == [], f"written in place: {in_place}"


@pytest.mark.slow
@pytest.mark.fault("training faults", "atomic")
def test_the_train_log_artifact_ends_with_the_runs_last_line(tracking_uri: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # Registering the model logs its lines after everything else was uploaded.
    proc = subprocess.run([PYTHON, str(TRAIN_SCRIPT), *small_overrides(tracking_uri, "mlflow.log_plots=false",
                                                                       "mlflow.register_as=digits"),
                           f"hydra.run.dir={out}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    local = (out / "train.log").read_text()
    client = MlflowClient(tracking_uri)
    (r,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    uploaded = Path(client.download_artifacts(r.info.run_id, "train.log", str(tmp_path / "artifact"))).read_text()
    assert "model registered: models:/digits/1" in local
    assert uploaded == local, (f"the artifact stops at: {uploaded.splitlines()[-1]!r}; the run's last line: "
                               f"{local.splitlines()[-1]!r}")
