"""``dry_run=true``: what a command would launch, each member checked with its run's one-line error, nothing created.

The grid and the invalid member go through ``scripts/train.py`` as a user
types them (Hydra makes dirs as soon as its main runs, so "nothing
created" is only shown by the real command); the rest calls the same
function in-process.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import PYTHON, TRAIN_SCRIPT
from mnist_np.common.paths import PROJECT_ROOT
from mnist_np.experiment.config.compose import compose
from mnist_np.experiment.config.schema import ConfigError
from mnist_np.experiment.config.validation import validate
from mnist_np.experiment.search.dry_run import Composer, dry_run, dry_run_requested

MEMBER = re.compile(r"^  #(\d+)  (.*?)  (\S+)(?:  invalid: (.*))?$")


def project_files() -> set[Path]:
    """What a command could leave in the project: run and sweep dirs, the default stores."""
    return ({p for kind in ("runs", "sweeps") for p in (PROJECT_ROOT / "outputs" / kind).rglob("*")}
            | {p for p in (PROJECT_ROOT / "mlflow.db", PROJECT_ROOT / "optuna.db") if p.exists()})


def command(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``scripts/train.py args`` run from ``tmp_path``, which must stay empty, as must the project's outputs."""
    before = project_files()
    proc = subprocess.run([PYTHON, str(TRAIN_SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"})
    assert sorted(tmp_path.rglob("*")) == [], "the dry run created files"
    assert project_files() == before, "the dry run created files in the project"
    return proc


@pytest.mark.slow
def test_a_2x3_grid_prints_its_6_members_and_creates_nothing(tmp_path: Path) -> None:
    proc = command(tmp_path, "--multirun", "model.hidden_size=64,128", "model.dropout=0.0,0.1,0.2",
                   "data.train_limit=1000", f"hydra.sweep.dir={tmp_path / 'sweep'}", "dry_run=true")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    members = [m.groups() for line in lines if (m := MEMBER.match(line))]
    # Hydra's order and job numbers; the name each run would get (dropout is not in the default name, so it is added).
    assert members == [
        (str(i), f"model.hidden_size={h} model.dropout={d}", f"mlp{h}-sgd-lr0.1-bs128-dropout={d}", None)
        for i, (h, d) in enumerate((h, d) for h in (64, 128) for d in ("0.0", "0.1", "0.2"))
    ]
    assert "every member: data.train_limit=1000" in lines
    assert lines[-1] == "6 members"
    assert proc.stderr == ""


@pytest.mark.slow
def test_an_invalid_member_exits_2_with_its_runs_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:  # what member 1's run would end with
        validate(compose(["model.hidden_size=0"]))
    proc = command(tmp_path, "--multirun", "model.hidden_size=64,0", "dry_run=true")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [f"error: invalid config: {refused.value}"]
    members = [m.groups() for line in proc.stdout.splitlines() if (m := MEMBER.match(line))]
    # Named as its FAILED child would be (mnist_np.experiment.sweep.records).
    assert members == [("0", "model.hidden_size=64", "mlp64-sgd-lr0.1-bs128", None),
                       ("1", "model.hidden_size=0", "invalid-config-hidden_size=0", str(refused.value))]
    assert proc.stdout.splitlines()[-1] == "2 members, 1 invalid"


def run_dry(*args: str) -> tuple[int, list[str], list[str]]:
    out, err = io.StringIO(), io.StringIO()
    status = dry_run(list(args), out, err)
    return status, out.getvalue().splitlines(), err.getvalue().splitlines()


def test_a_search_prints_its_space_and_n_trials_and_checks_its_corners(tmp_path: Path) -> None:
    storage = tmp_path / "optuna.db"
    status, out, err = run_dry("--multirun", "+sweep=optuna", "hydra.sweeper.n_trials=7",
                               f"hydra.sweeper.storage=sqlite:///{storage}",
                               "model.hidden_size=choice(16, 0)", "dry_run=true")
    assert status == 2 and out[-1] == "7 trials, 1 invalid", out
    assert out[0].startswith("dry run: a guided search of 7 trials (sampler tpe, pruner none")
    # The preset's space, with the command line's hidden size in place of the preset's.
    assert "  optimizer.lr: tag(log, interval(0.001, 0.5))  (a number in [0.001, 0.5], log scale)" in out
    assert "  model.hidden_size: choice(16, 0)  (one of 16, 0)" in out
    assert "  trainer.batch_size: choice(32, 64, 128)  (one of 32, 64, 128)" in out
    assert err == [f"error: invalid config: {_refusal('model.hidden_size=0')}"]
    assert not storage.exists()


def test_a_single_run_is_one_line(tmp_path: Path) -> None:
    status, out, err = run_dry("model.hidden_size=32", "optimizer=adam", f"hydra.run.dir={tmp_path / 'run'}",
                               "dry_run=true")
    assert (status, err) == (0, [])
    assert out[-2:] == ["  run  model.hidden_size=32 optimizer=adam  mlp32-adam-lr0.001-bs128", "1 run"]
    assert not (tmp_path / "run").exists()


def test_a_bad_command_line_is_refused_before_any_member() -> None:
    status, out, err = run_dry("--multirun", "optimizer=sgd,nope", "dry_run=true")
    assert (status, out) == (2, [])
    assert err == ["error: invalid config: optimizer='nope' is not a known option; allowed: adam, adamw, sgd"]


def test_resume_and_a_swept_dry_run_are_refused() -> None:
    status, _, err = run_dry("--multirun", "resume=/some/sweep", "dry_run=true")
    assert status == 2 and err[0].startswith("error: invalid config: dry_run=true is not allowed with resume=")
    with pytest.raises(ConfigError, match="dry_run is not allowed as a sweep"):
        dry_run_requested(["--multirun", "seed=1,2", "dry_run=true,false"])
    assert dry_run_requested(["--multirun", "seed=1,2", "dry_run=true"])
    assert not dry_run_requested(["--multirun", "seed=1,2", "dry_run=true", "dry_run=false"])  # the last word wins
    assert not dry_run_requested(["seed=1"])


def test_a_run_that_gets_dry_run_from_a_config_refuses_it() -> None:
    with pytest.raises(ConfigError, match="dry_run=true is not allowed in a config file or preset"):
        validate(compose(["dry_run=true"]))


@pytest.mark.parametrize("first,second", [
    (["optimizer=adam", "optimizer.lr=0.1"],
     ["optimizer=adam", "optimizer.lr=0.01", "seed=3", "tags=[a,b]", "model.hidden_size=32"]),
    (["+experiment=seed_baseline", "trainer.epochs=3"],
     ["+experiment=seed_baseline", "trainer.epochs=2", "optimizer.momentum=0.5"]),
    (["augment=affine", "data=fashion_mnist"],
     ["augment=affine", "augment.rotation=5", "data=fashion_mnist", "notes=x"]),
])
def test_a_member_set_on_a_base_composed_before_equals_hydras_own_composition(first: list[str],
                                                                              second: list[str]) -> None:
    composed: list[list[str]] = []
    composer = Composer(lambda job: composed.append(job) or compose(job))
    composer.config(first)  # composes the base the second member shares
    assert OmegaConf.to_container(composer.config(second)) == OmegaConf.to_container(compose(second))
    # The base left as it was.
    assert OmegaConf.to_container(composer.config(first)) == OmegaConf.to_container(compose(first))
    assert len(composed) == 1, composed  # once for both members


def _refusal(override: str) -> str:
    with pytest.raises(ConfigError) as refused:
        validate(compose([override]))
    return str(refused.value)
