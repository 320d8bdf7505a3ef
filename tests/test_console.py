"""What a user reads: a run's console holds the project's lines only and ends with its result line.

Captured from real commands (``scripts/train.py``, stdout and stderr as one
stream, as ``make train 2>&1`` shows them): a single run, and a 2-member
sweep whose members each end with their result line and the sweep with its
summary. MLflow's INFO lines and progress bars come back only when asked
for, with MLflow's own switch.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON, TRAIN_SCRIPT, small_overrides

pytestmark = pytest.mark.slow
NOISE = ("Downloading artifacts", "INFO mlflow", "Traceback", "Warning", "fontManager")
RESULT = re.compile(r"\] run (\S+) \(([0-9a-f]{32})\) FINISHED: test accuracy 0\.\d{4} \(validation 0\.\d{4}\); "
                    r"files in (\S+); see it with: mlflow ui --backend-store-uri (\S+)$")


def console(*args: str, env: dict[str, str] | None = None) -> list[str]:
    """The lines a user sees (stdout and stderr interleaved) of ``scripts/train.py args``; it must succeed."""
    proc = subprocess.run([PYTHON, str(TRAIN_SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout.splitlines()


def test_a_run_prints_its_own_lines_and_ends_with_its_result(tracking_uri: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    lines = console(*small_overrides(tracking_uri), f"hydra.run.dir={out}")
    assert [line for line in lines if any(n in line for n in NOISE)] == []
    result = RESULT.search(lines[-1])
    assert result is not None, lines[-1]
    name, run_id, files, store = result.groups()
    assert name == "mlp128-sgd-lr0.1-bs128" and Path(files) == out and store == tracking_uri
    assert (out / "mlflow_run.json").read_text().count(run_id) == 1

    # MLflow's own switch brings its INFO lines back.
    loud = console(*small_overrides(tracking_uri, "trainer.epochs=1", "mlflow.log_plots=false"),
                   f"hydra.run.dir={tmp_path / 'loud'}", env={"MLFLOW_LOGGING_LEVEL": "INFO"})
    assert any("INFO mlflow" in line for line in loud)


def test_each_sweep_member_ends_with_its_result_and_the_sweep_with_its_summary(tracking_uri: str,
                                                                               tmp_path: Path) -> None:
    lines = console("--multirun", "seed=0,1", *small_overrides(tracking_uri), f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert [line for line in lines if any(n in line for n in NOISE)] == []
    starts = [i for i, line in enumerate(lines) if re.search(r"\[HYDRA\] \t#\d : ", line)]
    assert len(starts) == 2
    ends = [starts[1] - 1, len(lines) - 2]  # the line before the next member, and before the sweep's summary
    names = [RESULT.search(lines[i]).group(1) for i in ends]  # type: ignore[union-attr]
    assert names == ["mlp128-sgd-lr0.1-bs128-seed=0", "mlp128-sgd-lr0.1-bs128-seed=1"]
    assert re.search(r"\[HYDRA\] sweep 'sweep seed=0,1': 2 members, 2 finished, 0 failed; best ", lines[-1]), lines[-1]
