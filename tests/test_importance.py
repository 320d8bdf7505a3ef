"""Which swept parameters mattered: PED-ANOVA over a sweep's finished members, on the parent run and in compare.py.

The real case is a sweep where only the learning rate matters (hidden sizes
127 and 128 barely differ), run as a user runs it; the rules (which keys
count, how their values become Optuna distributions) are checked on rows.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from conftest import PYTHON, TRAIN_SCRIPT
from helpers.scripts import run_script
from helpers.stores import migrated_store
from mnist_np.experiment.sweep.importance import distribution, param_importance, top_quantile
from mnist_np.experiment.sweep.summary import recorded_importance

LR = {"0.001": 0.30, "0.01": 0.70, "0.1": 0.90}  # validation accuracy by learning rate


def rows(lr_effect: bool = True, failed: int = 0) -> list[dict]:
    """A 3x2 grid's table rows: accuracy set by the learning rate (or not at all), hidden size a hair of noise."""
    made = [{"status": "FINISHED", "optimizer.lr": lr, "model.hidden_size": hs,
             "val_accuracy": (acc if lr_effect else 0.5) + (0.004 if hs == "127" else -0.003)}
            for lr, acc in LR.items() for hs in ("127", "128")]
    made += [{"status": "FAILED", "optimizer.lr": "1.0", "model.hidden_size": "1", "val_accuracy": None}] * failed
    return made


SWEPT = {"optimizer.lr": "0.001,0.01,0.1", "model.hidden_size": "127,128"}


def test_the_learning_rate_ranks_first_where_only_it_matters() -> None:
    ranked = param_importance(rows(failed=2), SWEPT)
    assert ranked is not None and [r["param"] for r in ranked] == ["optimizer.lr", "model.hidden_size"]
    assert ranked[0]["importance"] > 0.7 and abs(sum(r["importance"] for r in ranked) - 1) < 1e-5


def test_the_hidden_size_ranks_first_where_only_it_matters() -> None:
    flipped = [{**r, "val_accuracy": 0.9 if r["model.hidden_size"] == "128" else 0.3} for r in rows()]
    ranked = param_importance(flipped, SWEPT)
    assert ranked is not None and ranked[0]["param"] == "model.hidden_size"


def test_no_importance_unless_two_parameters_vary_among_finished_members() -> None:
    assert param_importance(rows(), {"optimizer.lr": SWEPT["optimizer.lr"]}) is None
    one_size = [r for r in rows(failed=3) if r["model.hidden_size"] != "127"]  # the other size only among failures
    assert param_importance(one_size, SWEPT) is None
    assert param_importance(rows()[:2], SWEPT) is None  # one lr among them


def test_ped_anova_is_computed_without_importing_scikit_learn() -> None:
    """Optuna's importance module imports scikit-learn for fANOVA; a sweep's summary spares that import (in a fresh
    process: this one may hold scikit-learn already), and scikit-learn stays importable after it."""
    code = ("import json, sys; from mnist_np.experiment.sweep.importance import param_importance; "
            "ranked = param_importance(*json.loads(sys.argv[1])); print(ranked[0]['param'], 'sklearn' in sys.modules); "
            "import sklearn; print('importable', sklearn.__name__)")
    proc = subprocess.run([PYTHON, "-c", code, json.dumps([rows(), SWEPT])], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.splitlines() == ["optimizer.lr False", "importable sklearn"], proc.stderr[-2000:]


def test_the_top_is_ten_percent_but_at_least_five_members_and_at_most_half() -> None:
    assert [top_quantile(n) for n in (6, 10, 20, 50, 400)] == [0.5, 0.5, 0.25, 0.1, 0.1]


@pytest.mark.parametrize("values,spec,expected", [
    (["127", "128"], "127,128", CategoricalDistribution([127, 128])),  # few values: each its own category
    (["sgd", "adam", "adamw", "sgd"], "sgd,adam,adamw", CategoricalDistribution(["adam", "adamw", "sgd"])),
    (["true", "false"], "true,false", CategoricalDistribution(["false", "true"])),
    (["0", "1", "2", "3", "4"], "range(5)", IntDistribution(0, 4)),
    (["0.001", "0.003", "0.01", "0.1"], "0.001,0.003,0.01,0.1", FloatDistribution(0.001, 0.1, log=True)),
    (["16", "32", "64", "512"], "16,32,64,512", IntDistribution(16, 512, log=True)),
    (["0.1", "0.2", "0.3", "0.4"], "0.1,0.2,0.3,0.4", FloatDistribution(0.1, 0.4)),
    (["0.01", "0.2", "0.3", "0.45"], "interval(0.0, 0.5)", FloatDistribution(0.01, 0.45)),  # a search's own scale
    (["0.002", "0.2", "0.3", "0.45"], "tag(log, interval(0.001, 0.5))", FloatDistribution(0.002, 0.45, log=True)),
])
def test_values_become_distributions(values: list[str], spec: str, expected: object) -> None:
    assert distribution(values, spec) == expected


def test_seeds_are_categories_whatever_their_number() -> None:
    assert (distribution([str(s) for s in range(8)], "range(8)", categorical=True)
            == CategoricalDistribution(list(range(8))))
    # The three best members have three different seeds: the seed did not matter.
    seeded = [{**r, "seed": str(seed)} for r, seed in zip(rows(), (0, 1, 2, 2, 0, 1))]
    ranked = param_importance(seeded, {**SWEPT, "seed": "0,1,2"})
    assert ranked is not None and [r["param"] for r in ranked] == ["optimizer.lr", "model.hidden_size", "seed"]
    assert ranked[-1]["importance"] < 0.01


def test_compare_explains_a_parent_without_importance(tmp_path: Path) -> None:
    uri = migrated_store(tmp_path / "store" / "mlflow.db")
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("sweeps"),
                               tags={"sweep_dir": "/x/sweep", "mlflow.runName": "sweep a"})
    with pytest.raises(ValueError, match="sweep 'sweep a' has no importance: fewer than two swept parameters "
                                         "vary.*sync.py /x/sweep"):
        recorded_importance(uri, parent.info.run_id)
    proc = run_script("compare", parent.info.run_id, "--importance", "--tracking-uri", uri)
    assert proc.returncode == 2 and proc.stderr.startswith("error: sweep 'sweep a' has no importance"), proc.stderr


@pytest.mark.slow
def test_a_grid_where_only_the_learning_rate_matters(tmp_path: Path) -> None:
    """The issue's case: lr 0.001, 0.01, 0.1 x hidden size 127, 128; one epoch on 1,000 images."""
    uri = migrated_store(tmp_path / "store" / "mlflow.db")
    proc = subprocess.run(
        [PYTHON, str(TRAIN_SCRIPT), "--multirun", "optimizer.lr=0.001,0.01,0.1", "model.hidden_size=127,128",
         f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=sweeps", "mlflow.log_plots=false",
         "data.train_limit=1000", "data.val_size=500", "trainer.epochs=1", "trainer.progress=false",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    client = MlflowClient(uri)
    (parent,) = [r for r in client.search_runs([client.get_experiment_by_name("sweeps").experiment_id])
                 if "mlflow.parentRunId" not in r.data.tags]
    local = tmp_path / "sweep" / "sweep_summary"
    recorded = (local / "importance.csv").read_text()
    table = list(csv.DictReader(io.StringIO(recorded)))
    assert [r["param"] for r in table] == ["optimizer.lr", "model.hidden_size"], recorded
    assert float(table[0]["importance"]) > float(table[1]["importance"])
    assert parent.data.tags["most_important_param"] == "optimizer.lr"
    files = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "sweep_summary")}
    assert {"importance.csv", "importance.png"} <= files
    assert Path(client.download_artifacts(parent.info.run_id, "sweep_summary/importance.csv",
                                          str(tmp_path))).read_text() == recorded
    assert (local / "importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def compare(*flags: str) -> list[str]:
        shown = run_script("compare", parent.info.run_id, "--importance", "--tracking-uri", uri, *flags)
        assert shown.returncode == 0, shown.stderr
        return shown.stdout.splitlines()

    text = compare()
    assert (text[0].startswith(f"sweep {parent.info.run_name!r}: importance of 2 swept parameters")
            and "6 finished members" in text[0])
    assert ([line.split() for line in text[1:]]
            == [["param", "importance"]] + [[r["param"], f"{float(r['importance']):.4f}"] for r in table])
    assert list(csv.DictReader(io.StringIO("\n".join(compare("--csv"))))) == table


@pytest.mark.slow
def test_a_guided_search_gets_its_importance_too(tmp_path: Path) -> None:
    """Five trials over an interval (numeric, log scale) and a choice (categorical); one epoch on 1,000 images."""
    uri = migrated_store(tmp_path / "store" / "mlflow.db")
    proc = subprocess.run(
        [PYTHON, str(TRAIN_SCRIPT), "--multirun", "+sweep=optuna", "hydra.sweeper.n_trials=5",
         f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}", "optimizer.lr=tag(log, interval(0.001, 0.3))",
         "model.hidden_size=choice(16, 32)", "trainer.batch_size=128", f"mlflow.tracking_uri={uri}",
         "mlflow.experiment_name=sweeps", "mlflow.log_plots=false", "data.train_limit=1000", "data.val_size=500",
         "trainer.epochs=1", "trainer.progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Warning" not in proc.stderr  # Optuna's few-trials warnings stay off the console
    table = list(csv.DictReader(io.StringIO((tmp_path / "sweep" / "sweep_summary" / "importance.csv").read_text())))
    # trainer.batch_size is fixed on the command line: one value, not ranked.
    assert sorted(r["param"] for r in table) == ["model.hidden_size", "optimizer.lr"]
    client = MlflowClient(uri)
    (parent,) = [r for r in client.search_runs([client.get_experiment_by_name("sweeps").experiment_id])
                 if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.tags["most_important_param"] == table[0]["param"]
