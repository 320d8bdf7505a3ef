"""--multirun sweeps: one MLflow parent per sweep, members as children, with every launcher and sweeper.

Each test runs scripts/train.py as a subprocess (real Hydra, real plugins)
against a fresh SQLite store, on 1,000 images for 1 epoch.
"""

from __future__ import annotations

import csv
import io
import os
import statistics
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, TRAIN_SCRIPT
from helpers.scripts import run_script
from helpers.stores import migrated_store
from mnist_np.experiment.run.tables import table_markdown
from mnist_np.experiment.sweep.grid import GridSweeperImpl
from mnist_np.experiment.sweep.info import member_run_name, swept_parameters
from mnist_np.experiment.sweep.summary import summarize

pytestmark = pytest.mark.slow
PER_EPOCH = ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds", "samples_per_second"]


def sweep(tmp_path: Path, *args: str, epochs: int = 1, train_limit: int = 1000, wait: bool = True, timeout: int = 600,
          tracking_uri: str | None = None, new_store: bool = False):
    """Run ``scripts/train.py --multirun`` on a small subset into a fresh SQLite store (or ``tracking_uri``).

    ``new_store``: a store no one has opened yet (the sweep migrates it), instead of a migrated copy.
    """
    store = tmp_path / "store" / "mlflow.db"
    uri = tracking_uri or (f"sqlite:///{store}" if new_store else migrated_store(store))
    cmd = [
        PYTHON, str(TRAIN_SCRIPT), "--multirun", *args,
        f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=sweeps", "mlflow.log_plots=false",
        f"data.train_limit={train_limit}", "data.val_size=500", f"trainer.epochs={epochs}", "trainer.progress=false",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    if not wait:  # in a session of its own: a test may signal the whole sweep (os.killpg)
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True), uri
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout), uri


def parent_and_children(uri: str):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1
    return client, parent, children


def check_summary(client: MlflowClient, parent, children, swept: list[str], finished: int, failed: int) -> None:
    t, m = parent.data.tags, parent.data.metrics
    assert (m["members"], m["members_finished"], m["members_failed"]) == (finished + failed, finished, failed)
    done = [c for c in children if c.info.status == "FINISHED"]
    top = max(c.data.metrics["best_val_accuracy"] for c in done)
    best = next(c for c in done if c.info.run_id == t["best_run_id"])
    assert best.data.metrics["best_val_accuracy"] == top  # ties are broken by name
    assert m["best_val_accuracy"] == best.data.metrics["best_val_accuracy"]
    assert m["best_test_accuracy"] == best.data.metrics["test_accuracy"]
    files = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "sweep_summary")}
    assert {"summary.csv", "summary.md"} | {f"val_accuracy_vs_{k}.png" for k in swept} <= files
    local = Path(client.download_artifacts(parent.info.run_id, "sweep_summary/summary.csv"))
    lines = local.read_text().splitlines()
    assert len(lines) == 1 + finished + failed
    assert lines[1].split(",")[0] == best.info.run_name  # sorted: best validation accuracy first
    assert len({c.info.run_name for c in children}) == len(children)  # names are unique


def test_grid_2x2_basic_launcher(tmp_path: Path) -> None:
    proc, uri = sweep(tmp_path, "model.hidden_size=16,32", "optimizer.lr=0.05,0.1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, parent, children = parent_and_children(uri)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "sweep model.hidden_size=16,32 optimizer.lr=0.05,0.1"
    assert parent.data.params["model.hidden_size"] == "16,32" and parent.data.params["optimizer.lr"] == "0.05,0.1"
    combos = sorted((c.data.params["model.hidden_size"], c.data.params["optimizer.lr"]) for c in children)
    assert combos == [("16", "0.05"), ("16", "0.1"), ("32", "0.05"), ("32", "0.1")]
    assert all(c.info.status == "FINISHED" for c in children)
    assert ({c.info.run_name for c in children}
            == {"mlp16-sgd-lr0.05-bs128", "mlp16-sgd-lr0.1-bs128", "mlp32-sgd-lr0.05-bs128", "mlp32-sgd-lr0.1-bs128"})
    check_summary(client, parent, children, ["model.hidden_size", "optimizer.lr"], finished=4, failed=0)
    outputs = sorted(p.name for p in (tmp_path / "sweep").iterdir())
    assert outputs == ["0", "1", "2", "3", "mlflow_sweep.json", "multirun.yaml", "sweep.lock", "sweep_summary"]

    # The same sweep compared from a terminal: a sorted table, and CSV for scripts.
    compare = [PYTHON, str(TRAIN_SCRIPT.parent / "compare.py"), parent.info.run_id, "--tracking-uri", uri]
    text = subprocess.run(compare, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("sweep 'sweep model.hidden_size=16,32 optimizer.lr=0.05,0.1': 4 runs, 4 finished")
    assert lines[1].split()[:4] == ["name", "status", "model.hidden_size", "optimizer.lr"]
    best = client.get_run(parent.data.tags["best_run_id"]).info.run_name
    assert lines[2].split()[0] == best and len(lines) == 6
    # The same table as CSV: the script's main() in this process (the command line was shown above).
    rows = list(csv.DictReader(io.StringIO(run_script("compare", *compare[2:], "--csv").stdout)))
    vals = [float(r["val_accuracy"]) for r in rows]
    assert len(rows) == 4 and vals == sorted(vals, reverse=True)


def test_seed_groups_aggregate_each_config_over_its_seeds(tmp_path: Path) -> None:
    """A 2x2 sweep over configs and seeds: by_config.csv has one row per config with the right means, best first."""
    proc, uri = sweep(tmp_path, "model.hidden_size=16,32", "seed=0,1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, parent, children = parent_and_children(uri)
    local = Path(client.download_artifacts(parent.info.run_id, "sweep_summary/by_config.csv"))
    rows = list(csv.DictReader(io.StringIO(local.read_text())))
    assert [r["model.hidden_size"] for r in rows] != [] and len(rows) == 2 and "seed" not in rows[0]
    for row in rows:
        group = [c for c in children if c.data.params["model.hidden_size"] == row["model.hidden_size"]]
        assert row["n"] == "2" and row["failed"] == "0" and row["seeds"] == "0,1"
        for key, metric in (("val_accuracy", "best_val_accuracy"), ("test_accuracy", "test_accuracy")):
            values = [c.data.metrics[metric] for c in group]
            assert float(row[f"{key}_mean"]) == pytest.approx(statistics.fmean(values), abs=1e-12)
            assert float(row[f"{key}_std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
        assert (float(row["train_seconds_mean"])
                == pytest.approx(statistics.fmean(c.data.metrics["train_seconds"] for c in group)))
    assert float(rows[0]["val_accuracy_mean"]) >= float(rows[1]["val_accuracy_mean"])  # best group first
    md = Path(client.download_artifacts(parent.info.run_id, "sweep_summary/by_config.md")).read_text()
    assert f"{float(rows[0]['val_accuracy_mean']):.4f} ± {float(rows[0]['val_accuracy_std']):.4f}" in md

    # The same table as compare.py prints it (its main() in this process: test_grid_2x2_basic_launcher runs the
    # command).
    compare = [parent.info.run_id, "--tracking-uri", uri, "--by-config"]
    text = run_script("compare", *compare)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].endswith("4 runs, 4 finished, 0 failed or unfinished; 2 configs") and len(lines) == 4
    assert lines[1].split()[:3] == ["model.hidden_size", "n", "failed"]
    assert lines[2].split()[0] == rows[0]["model.hidden_size"] and "±" in lines[2]
    by_csv = run_script("compare", *compare, "--csv").stdout
    assert list(csv.DictReader(io.StringIO(by_csv))) == rows


def test_grid_2x2_joblib_parallel(tmp_path: Path) -> None:
    proc, uri = sweep(tmp_path, "+sweep=parallel", "model.hidden_size=16,32", "optimizer.weight_decay=0,0.001")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, parent, children = parent_and_children(uri)
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    # Two workers share the cores: each limits its BLAS threads.
    assert {c.data.tags["blas_threads"] for c in children} == {str(max(1, (os.cpu_count() or 1) // 2))}
    assert len({c.data.tags["pid"] for c in children}) >= 2  # really in separate processes
    # weight decay is not in the base name, so it is appended to keep names apart
    assert "mlp16-sgd-lr0.1-bs128-weight_decay=0.001" in {c.info.run_name for c in children}
    check_summary(client, parent, children, ["model.hidden_size", "optimizer.weight_decay"], finished=4, failed=0)


def test_submitit_local_launcher(tmp_path: Path) -> None:
    proc, uri = sweep(tmp_path, "hydra/launcher=submitit_local", "model.hidden_size=16,32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, parent, children = parent_and_children(uri)
    assert sorted(c.data.params["model.hidden_size"] for c in children) == ["16", "32"]
    assert all(c.info.status == "FINISHED" for c in children)
    check_summary(client, parent, children, ["model.hidden_size"], finished=2, failed=0)


def test_optuna_search_with_4_trials(tmp_path: Path) -> None:
    proc, uri = sweep(tmp_path, "+sweep=optuna", "hydra.sweeper.n_trials=4",
                      f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, parent, children = parent_and_children(uri)
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    for c in children:
        assert 0.001 <= float(c.data.params["optimizer.lr"]) <= 0.5
        assert c.data.params["model.hidden_size"] in {"64", "128", "256"}
        assert c.data.params["trainer.batch_size"] in {"32", "64", "128"}
    assert parent.data.params["optimizer.lr"] == "tag(log, interval(0.001, 0.5))"
    check_summary(client, parent, children, ["optimizer.lr", "model.hidden_size", "trainer.batch_size"], finished=4,
                  failed=0)
    assert (tmp_path / "sweep" / "optimization_results.yaml").exists()


@pytest.mark.fault("training faults", "FAILED")
def test_a_diverging_member_fails_alone(tmp_path: Path) -> None:
    proc, uri = sweep(tmp_path, "optimizer.lr=0.1,1e6,0.05")
    assert proc.returncode == 1
    assert "1 of 3 sweep members failed" in proc.stderr
    client, parent, children = parent_and_children(uri)
    status = {c.data.params["optimizer.lr"]: c.info.status for c in children}
    assert status == {"0.1": "FINISHED", "1000000.0": "FAILED", "0.05": "FINISHED"}
    failed = next(c for c in children if c.info.status == "FAILED")
    assert ("TrainingDiverged" in failed.data.tags["failure_reason"]
            and "epoch 1, batch" in failed.data.tags["failure_reason"])
    assert parent.info.status == "FINISHED" and parent.data.tags["members_failed"] == "1"
    check_summary(client, parent, children, ["optimizer.lr"], finished=2, failed=1)


@pytest.mark.fault("load", "complete")
def test_eight_parallel_members_on_a_fresh_store(tmp_path: Path) -> None:
    """Parallel first use of a new SQLite file must not corrupt it: the parent creates it first."""
    proc, uri = sweep(tmp_path, "+sweep=parallel", "hydra.launcher.n_jobs=8", "seed=range(8)", epochs=2,
                      train_limit=500, new_store=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, parent, children = parent_and_children(uri)
    assert len(children) == 8 and all(c.info.status == "FINISHED" for c in children)
    for c in children:
        for name in PER_EPOCH:
            assert [m.step for m in client.get_metric_history(c.info.run_id, name)] == [1, 2], (c.info.run_name, name)
    assert sorted(int(c.data.params["seed"]) for c in children) == list(range(8))


# --- the pure parts, without launching anything --------------------------------


class ComposedJobs:
    """A config loader that notes the jobs a sweeper composes instead of composing them."""

    def __init__(self) -> None:
        self.jobs: list[list[str]] = []

    def load_sweep_config(self, master_config: object, sweep_overrides: list[str]) -> None:
        self.jobs.append(sweep_overrides)


@pytest.mark.parametrize("params", [{}, {"optimizer.lr": "0.05,0.1"}], ids=["command line", "config params"])
def test_a_grid_composes_before_launching_only_what_the_command_line_check_did_not(params: dict[str, str]) -> None:
    """Swept values from the command line were type-checked and each group option composed (check_overrides): one job
    per combination of group options is composed before launching; values from the config's params, every job."""
    # Not through BasicSweeper.__init__: its super(BasicSweeper, self) names the module global, which Hydra's plugin
    # scan (run by an earlier test in this process) may have bound to a class re-made after this one was defined.
    sweeper = GridSweeperImpl.__new__(GridSweeperImpl)
    sweeper.params = params
    loader = ComposedJobs()
    sweeper.hydra_context, sweeper.config = type("Context", (), {"config_loader": loader})(), object()
    batch = [["trainer.epochs=1", f"optimizer={o}", f"optimizer.lr={lr}"]
             for o in ("sgd", "adam") for lr in (0.05, 0.1)]
    sweeper.validate_batch_is_legal(batch[:3])
    sweeper.validate_batch_is_legal(batch[3:])
    assert loader.jobs == (batch if params else [batch[0], batch[2]])


def test_swept_parameters_command_line_over_search_space() -> None:
    swept = swept_parameters(["model.hidden_size=64,128", "trainer.epochs=3",
                              "optimizer.lr=tag(log, interval(0.01, 1))"],
                             {"optimizer.lr": "tag(log, interval(0.001, 0.5))", "trainer.batch_size": "choice(32, 64)"})
    assert swept == {"optimizer.lr": "tag(log, interval(0.01, 1))", "trainer.batch_size": "choice(32, 64)",
                     "model.hidden_size": "64,128"}


def test_member_names_show_only_what_the_base_name_does_not() -> None:
    swept = {"model.hidden_size": "64,128", "model.dropout": "0,0.2", "optimizer": "sgd,adam"}
    job = ["model.hidden_size=64", "model.dropout=0.2", "optimizer=adam", "trainer.epochs=3"]
    assert (member_run_name("mlp64-adam-lr0.001-bs128", job, swept, explicit_base=False)
            == "mlp64-adam-lr0.001-bs128-dropout=0.2")
    assert member_run_name("mine", job, swept, explicit_base=True) == "mine-hidden_size=64-dropout=0.2-optimizer=adam"


def test_summary_picks_the_best_by_validation_never_by_test() -> None:
    def child(name, status, val, test):
        return {"run_id": name, "name": name, "status": status, "params": {"k": name}, "tags": {},
                "metrics": {} if val is None else {"best_val_accuracy": val, "test_accuracy": test}}

    s = summarize([child("a", "FINISHED", 0.90, 0.99), child("b", "FINISHED", 0.95, 0.80),
                   child("c", "FAILED", None, None)], ["k"])
    assert (s.total, s.finished, s.failed) == (3, 2, 1) and not s.ok
    assert s.best is not None and s.best["name"] == "b"
    assert [r["name"] for r in s.rows] == ["b", "a", "c"]
    md = table_markdown(s.rows)
    assert md.splitlines()[2].startswith("| b | FINISHED | b | 0.9500 | 0.8000 |")
