"""The shortcuts of mnist_np.speedups: one switch, and none of them changes a result.

What each one saves is measured by ``scripts/bench.py run --speedups`` (and
``bench.py sweep --speedups`` for warm_workers), never by a timed test.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON, TRAIN_SCRIPT, small_overrides
from mnist_np import speedups
from mnist_np.experiment.config.compose import compose
from mnist_np.experiment.run.single import run


@pytest.mark.parametrize("value,on", [
    ("", set(speedups.NAMES)),
    ("all", set(speedups.NAMES)),
    ("none", set()),
    ("fast_exit,warm_workers", {"fast_exit", "warm_workers"}),
    ("-fast_exit", set(speedups.NAMES) - {"fast_exit"}),
    ("-fast_exit,-warm_workers", {"figures_in_background", "skip_requirements_check"}),
])
def test_the_switch(value: str, on: set[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(speedups.ENV, value)
    assert {name for name in speedups.NAMES if speedups.enabled(name)} == on


def test_a_misspelt_switch_is_one_line_naming_what_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(speedups.ENV, "fast_exti")
    with pytest.raises(ValueError) as e:
        speedups.enabled("fast_exit")
    assert "fast_exti" in str(e.value) and "figures_in_background" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_results_are_the_same_with_every_shortcut_off(tracking_uri: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    hashes = {}
    for value in ("all", "none"):
        monkeypatch.setenv(speedups.ENV, value)
        out = tmp_path / value
        run(compose(small_overrides(tracking_uri, "trainer.epochs=1")), output_dir=out)
        hashes[value] = json.loads((out / "summary.json").read_text())["weights_sha256"]
        assert sorted(p.name for p in (out / "plots").glob("*.png")) == [
            "accuracy_curves.png", "confusion_matrix.png", "first_layer_weights.png", "loss_curves.png",
            "misclassified.png"]
    assert hashes["all"] == hashes["none"]


@pytest.mark.parametrize("value", ["all", "-fast_exit"])
def test_the_exit_status_and_output_survive_a_fast_exit(value: str, tmp_path: Path) -> None:
    env = {"MNIST_NP_SPEEDUPS": value, "PATH": "/usr/bin:/bin"}
    # A value refused inside the Hydra job (exit 2 raised there), in a run dir of the test's own.
    bad = subprocess.run([PYTHON, str(TRAIN_SCRIPT), "optimizer.lr=0", f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert (bad.returncode == 2
            and bad.stderr == "error: invalid config: optimizer.lr=0.0 is not allowed; expected a number > 0\n")
    helped = subprocess.run([PYTHON, str(TRAIN_SCRIPT), "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert helped.returncode == 0 and helped.stdout.rstrip().endswith("Hydra's own flags: --hydra-help")


@pytest.mark.slow
def test_bench_run_times_each_shortcut_off(tmp_path: Path) -> None:
    """``scripts/bench.py run --speedups`` (what ``make bench`` runs) measures every run-time shortcut; here on a tiny
    run."""
    out = tmp_path / "bench-run.json"
    proc = subprocess.run([PYTHON, str(TRAIN_SCRIPT.parent / "bench.py"), "run", "--speedups", "--repeats", "1",
                           "--json", str(out), "data.train_limit=1000", "data.val_size=500", "trainer.epochs=1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["speedup_saves_s"]) == set(speedups.NAMES) - {"warm_workers"}  # that one is bench.py sweep's
    assert [len(runs) for runs in result["variants"].values()] == [1] * len(speedups.NAMES)
    assert all(r["epochs"] == 1 and r["wall_s"] > r["epochs_s"] > 0 for runs in result["variants"].values()
               for r in runs)


def test_mlflows_requirements_check_is_where_the_shortcut_skips_it(monkeypatch) -> None:
    """``skip_requirements_check`` replaces a function MLflow imports by name: if MLflow moves it, this fails."""
    import mlflow.utils.environment as environment

    from mnist_np.tracking.logged_model import REQUIREMENTS_CHECK

    original = getattr(environment, REQUIREMENTS_CHECK)
    assert callable(original) and REQUIREMENTS_CHECK in environment._process_pip_requirements.__code__.co_names
    monkeypatch.setenv(speedups.ENV, "all")
    with speedups.requirements_check_skipped(environment, REQUIREMENTS_CHECK):
        assert getattr(environment, REQUIREMENTS_CHECK) is not original
    assert getattr(environment, REQUIREMENTS_CHECK) is original
    monkeypatch.setenv(speedups.ENV, "-skip_requirements_check")
    with speedups.requirements_check_skipped(environment, REQUIREMENTS_CHECK):
        assert getattr(environment, REQUIREMENTS_CHECK) is original
