"""The guided search (+sweep=optuna): Optuna >= 4 behind Hydra's sweeper interface.

End to end as a user runs it -- scripts/train.py as a subprocess, a real
Optuna study in a SQLite file and a real MLflow store in a temp dir, 1,000
training images -- plus the pieces on their own (search space, settings,
Pareto front, how a trial's outcome is read).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import PYTHON, TRAIN_SCRIPT
from helpers.scripts import load, run_script
from helpers.stores import migrated_store
from mnist_np.experiment.config.schema import ConfigError
from mnist_np.experiment.search.outcome import trial_outcome
from mnist_np.experiment.search.space import search_space
from mnist_np.experiment.search.study import SearchSettings, check, open_storage
from mnist_np.experiment.sweep.info import SweepInfo
from mnist_np.experiment.sweep.resume import resume_command
from mnist_np.experiment.sweep.summary import pareto

EXPERIMENT = "search"


def command(tmp_path: Path, *args: str, n_trials: int, epochs: int = 1, preset: str = "optuna") -> list[str]:
    return [
        PYTHON, str(TRAIN_SCRIPT), "--multirun", f"+sweep={preset}", f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}", "hydra.sweeper.seed=0",
        f"mlflow.tracking_uri={migrated_store(tmp_path / 'store' / 'mlflow.db')}",
        f"mlflow.experiment_name={EXPERIMENT}", "mlflow.log_plots=false", "data.train_limit=1000", "data.val_size=500",
        f"trainer.epochs={epochs}", "trainer.progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}", *args,
    ]


def search(tmp_path: Path, *args: str, n_trials: int, epochs: int = 1,
           preset: str = "optuna") -> subprocess.CompletedProcess:
    return subprocess.run(command(tmp_path, *args, n_trials=n_trials, epochs=epochs, preset=preset),
                          capture_output=True, text=True, timeout=900)


def outcome(tmp_path: Path):
    """The study, the parent run and its children, as the search left them."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1
    study = optuna.load_study(study_name=parent.data.tags["optuna.study_name"],
                              storage=open_storage(parent.data.tags["optuna.storage"]))
    return client, study, parent, children


def by_trial(children) -> dict[int, object]:
    numbers = [int(c.data.tags["optuna.trial_number"]) for c in children]
    assert len(set(numbers)) == len(numbers)  # one member run per trial
    return dict(zip(numbers, children))


@pytest.mark.slow
def test_a_stored_search_whose_trials_are_the_sweeps_children(tmp_path: Path) -> None:
    proc = search(tmp_path, n_trials=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, study, parent, children = outcome(tmp_path)
    assert (parent.info.status == "FINISHED"
            and parent.data.tags["optuna.storage"] == f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4 and len(children) == 4
    for number, child in by_trial(children).items():
        trial = study.trials[number]
        assert child.info.status == "FINISHED"
        assert float(child.data.params["optimizer.lr"]) == pytest.approx(trial.params["optimizer.lr"])
        assert child.data.params["model.hidden_size"] == str(trial.params["model.hidden_size"])
        assert trial.value == child.data.metrics["best_val_accuracy"]
        assert trial.intermediate_values == {1: child.data.metrics["val_accuracy"]}  # reported after its epoch
    results = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert f"best_value: {study.best_value}" in results


@pytest.mark.slow
@pytest.mark.fault("training faults", "search goes on")
def test_failing_trials_never_end_the_study(tmp_path: Path) -> None:
    """Half the learning rates diverge, some dropouts are invalid: every trial runs, failures are counted, one line."""
    proc = search(tmp_path, "optimizer.lr=choice(0.05,1000.0)", "model.dropout=choice(0.0,0.1,1.5)", n_trials=12)
    client, study, parent, children = outcome(tmp_path)
    states = [t.state for t in study.trials]
    failed = states.count(TrialState.FAIL)
    assert len(states) == 12 and states.count(TrialState.COMPLETE) == 12 - failed and 0 < failed < 12
    assert (proc.returncode == 1
            and proc.stderr.strip().splitlines()[-1] == f"error: {failed} of 12 sweep members failed")
    assert "Traceback" not in proc.stderr
    assert len(children) == 12 and sum(c.info.status == "FAILED" for c in children) == failed
    for number, child in by_trial(children).items():
        assert (child.info.status == "FAILED") == (study.trials[number].state == TrialState.FAIL)
    reasons = {c.data.tags["failure_reason"].split(":")[0] for c in children if c.info.status == "FAILED"}
    assert reasons <= {"TrainingDiverged", "invalid config"} and reasons
    assert parent.info.status == "FINISHED" and parent.data.metrics["members_failed"] == failed


@pytest.mark.slow
@pytest.mark.fault("sweep killed", "search resumed")
def test_a_killed_search_resumes_to_exactly_n_trials(tmp_path: Path, lost) -> None:
    args = command(tmp_path, n_trials=6, epochs=3)
    killed = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # kill -9 once two trials are done (the third is running then)
        time.sleep(0.5)
        try:
            summaries = optuna.get_all_study_summaries(storage)
        except Exception:  # the storage is not created yet
            continue
        if summaries and len([t for t in optuna.load_study(study_name=summaries[0].study_name, storage=storage).trials
                              if t.state == TrialState.COMPLETE]) >= 2:
            break
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    _, _, parent, _ = outcome(tmp_path)
    assert parent.info.status == "RUNNING"  # killed with its process

    # By its parent run id, in the store the command names; the rest comes from the sweep's own multirun.yaml.
    resumed = subprocess.run([PYTHON, str(TRAIN_SCRIPT), "--multirun", f"resume={parent.info.run_id}",
                              f"mlflow.tracking_uri=sqlite:///{tmp_path / 'store' / 'mlflow.db'}"],
                             capture_output=True, text=True, timeout=900)
    client, study, after, children = outcome(tmp_path)
    states = [t.state for t in study.trials]
    lost.record(runs=sum(c.info.status == "RUNNING" for c in children) + int(after.info.status == "RUNNING"), metrics=0)
    assert (after.info.run_id == parent.info.run_id and after.info.status == "FINISHED"
            and after.data.tags["resumed"] == "true")
    assert len(states) == 6 and set(states) <= {TrialState.COMPLETE, TrialState.FAIL} and TrialState.FAIL in states
    members = by_trial(children)
    assert all(c.info.status in ("FINISHED", "FAILED") for c in children)
    for number, trial in enumerate(study.trials):
        # The trial killed mid-run is FAIL; so is its member run, if it had made one before the kill.
        assert trial.state == (TrialState.COMPLETE if number in members and members[number].info.status == "FINISHED"
                               else TrialState.FAIL)
    failed = sum(c.info.status == "FAILED" for c in children)
    assert resumed.returncode == (1 if failed else 0), resumed.stderr[-3000:]
    if failed:
        assert resumed.stderr.strip().splitlines()[-1] == f"error: {failed} of {len(children)} sweep members failed"
    # Resuming a finished search adds nothing.
    again = subprocess.run([PYTHON, str(TRAIN_SCRIPT), "--multirun", f"resume={tmp_path / 'sweep'}"],
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == resumed.returncode and len(outcome(tmp_path)[1].trials) == 6


@pytest.mark.slow
def test_a_pruned_search_stops_members_early_and_says_so(tmp_path: Path) -> None:
    proc = search(tmp_path, "hydra.sweeper.pruner=hyperband", "hydra.sweeper.reduction_factor=2", n_trials=8, epochs=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, study, parent, children = outcome(tmp_path)
    pruned = [t.number for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and len(study.trials) == 8
    members = by_trial(children)
    epochs = sum(c.data.metrics["epochs_trained"] for c in children)
    assert epochs < 8 * 4
    for number in pruned:
        child = members[number]
        stop = int(child.data.tags["pruned_at_epoch"])
        assert child.info.status == "FINISHED" and stop < 4 and child.data.metrics["epochs_trained"] == stop
        assert "test_accuracy" in child.data.metrics  # scored and saved like any run
        assert max(study.trials[number].intermediate_values) == stop
    assert parent.data.metrics["members_pruned"] == len(pruned) and parent.data.metrics["members_failed"] == 0
    table = (tmp_path / "sweep" / "sweep_summary" / "summary.csv").read_text().splitlines()
    assert "pruned_at_epoch" in table[0]


@pytest.mark.slow
@pytest.mark.parametrize("asynchronous", [True, False])
def test_joblib_workers_report_to_their_trials_and_are_pruned(tmp_path: Path, asynchronous: bool) -> None:
    proc = search(tmp_path, "hydra.sweeper.n_jobs=2", "hydra.sweeper.pruner=hyperband",
                  "hydra.sweeper.reduction_factor=2", f"hydra.sweeper.asynchronous={str(asynchronous).lower()}",
                  n_trials=8, epochs=4, preset="[optuna,parallel]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, study, parent, children = outcome(tmp_path)
    assert len(study.trials) == 8 and len(children) == 8 and sorted(by_trial(children)) == list(range(8))
    # Which trials the pruner stops depends on which others were told first (test_a_pruned_search_stops_members_early
    # shows that it does); each one it stopped is a FINISHED member that says so, and trained fewer epochs.
    members = by_trial(children)
    for t in study.trials:
        pruned = t.state == TrialState.PRUNED
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED) and members[t.number].info.status == "FINISHED"
        assert ("pruned_at_epoch" in members[t.number].data.tags) == pruned
        assert members[t.number].data.metrics["epochs_trained"] == (len(t.intermediate_values) if pruned else 4)
    assert len({c.data.tags["pid"] for c in children}) >= 2  # members ran in the workers' processes
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)
    recorded = json.loads((tmp_path / "sweep" / "mlflow_sweep.json").read_text())
    # Two workers either way; a member's wall time runs from when a worker took it (asked for it, or launched its
    # batch) to its run's end, as noted in the sweep dir (a file per job, its time in seconds).
    assert recorded["workers"] == 2 and 0 < parent.data.metrics["workers_busy_fraction"] <= 1
    taken_dir = tmp_path / "sweep" / "workers" / "taken"
    taken = {int(p.name): round(1000 * float(p.read_text())) for p in taken_dir.iterdir()}
    assert sorted(taken) == sorted(int(c.data.tags["sweep_job_num"]) for c in children)
    spans = [(taken[int(c.data.tags["sweep_job_num"])], c.info.end_time) for c in children]
    assert all(s <= c.info.start_time for (s, _), c in zip(spans, children))  # taken before its run began
    expected = sum(e - s for s, e in spans) / (2 * (max(e for _, e in spans) - min(s for s, _ in spans)))
    assert parent.data.metrics["workers_busy_fraction"] == pytest.approx(expected)
    if not asynchronous:  # batches of two: the members of a batch taken at the same moment
        assert len(set(taken.values())) == len(taken) // 2


@pytest.mark.slow
def test_a_journal_file_holds_the_study_for_a_cluster(tmp_path: Path) -> None:
    """Optuna's journal storage (a file on a shared filesystem): members report to it as to a database."""
    journal = tmp_path / "shared" / "optuna.log"
    journal.parent.mkdir()
    proc = search(tmp_path, f"hydra.sweeper.storage={journal}", "hydra.sweeper.pruner=median", n_trials=3, epochs=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, study, parent, children = outcome(tmp_path)
    assert parent.data.tags["optuna.storage"] == str(journal) and journal.stat().st_size > 0
    assert len(study.trials) == 3 and all(t.intermediate_values.keys() == {1, 2} for t in study.trials)


@pytest.mark.slow
def test_two_objectives_give_the_parent_a_pareto_front(tmp_path: Path) -> None:
    proc = search(tmp_path, "hydra.sweeper.objectives=[val_accuracy,train_seconds]",
                  "hydra.sweeper.direction=[maximize,minimize]", n_trials=5)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, study, parent, children = outcome(tmp_path)
    front = set(parent.data.tags["pareto_run_ids"].split(","))
    assert front and front <= {c.info.run_id for c in children}
    score = {c.info.run_id: (c.data.metrics["best_val_accuracy"], -c.data.metrics["train_seconds"]) for c in children}
    for run_id in front:  # nobody is at least as good in both and better in one
        a = score[run_id]
        assert not any(b[0] >= a[0] and b[1] >= a[1] and b != a for b in score.values())
    for run_id in set(score) - front:  # everybody else is dominated
        a = score[run_id]
        assert any(b[0] >= a[0] and b[1] >= a[1] and b != a for b in score.values())
    files = {Path(f.path).name for f in client.list_artifacts(parent.info.run_id, "sweep_summary")}
    assert {"pareto.csv", "pareto_front.png"} <= files
    assert len(study.best_trials) == len(front)


@pytest.mark.slow
def test_optuna_dashboard_opens_the_stored_study(tmp_path: Path) -> None:
    """docs/sweeps.md's `optuna-dashboard <storage>`: a real dashboard on 127.0.0.1 serves the search's study."""
    import shutil
    import sys
    import urllib.request

    from helpers.servers import free_port

    dashboard = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    assert dashboard, "optuna-dashboard is not installed (make installs the dashboard extra)"
    assert search(tmp_path, n_trials=2).returncode == 0
    _, study, _, _ = outcome(tmp_path)
    port = free_port()
    server = subprocess.Popen([dashboard, f"sqlite:///{tmp_path / 'optuna.db'}", "--host", "127.0.0.1", "--port",
                               str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, body = time.monotonic() + 60, ""
        while time.monotonic() < deadline and study.study_name not in body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    body = response.read().decode()
            except OSError:
                time.sleep(0.5)
        studies = json.loads(body)["study_summaries"]
        assert [s["study_name"] for s in studies] == [study.study_name]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


# --- the pieces ------------------------------------------------------------------------------


def test_the_search_space_syntax() -> None:
    distributions, fixed = search_space({"optimizer.lr": "tag(log, interval(0.001, 0.5))",
                                         "model.hidden_size": "choice(64, 128)"},
                                        ["seed=range(0, 10, 2)", "trainer.epochs=3", "+x=tag(int, interval(16, 512))",
                                         "model.hidden_size=32"])
    assert distributions["optimizer.lr"] == optuna.distributions.FloatDistribution(0.001, 0.5, log=True)
    assert distributions["seed"] == optuna.distributions.IntDistribution(0, 8, step=2)
    assert distributions["+x"] == optuna.distributions.IntDistribution(16, 512)
    # Fixed wins.
    assert "model.hidden_size" not in distributions and fixed == ["trainer.epochs=3", "model.hidden_size=32"]


@pytest.mark.parametrize("spec,fragment", [
    ("tag(log, choice(1, 2))", "tag(log, ...) needs a range or an interval"),
    ("interval(0, 1) ", None),
    ("tag(log, interval(0, 1))", "low > 0 with tag(log"),
    ("interval(5, 1)", "must have low < high"),
])
def test_a_bad_search_space_is_one_line(spec: str, fragment: str | None) -> None:
    if fragment is None:
        search_space({"optimizer.lr": spec}, [])
        return
    with pytest.raises(ConfigError, match=re.escape(fragment)) as e:
        search_space({"optimizer.lr": spec}, [])
    assert "\n" not in str(e.value)


def settings(**changes) -> SearchSettings:
    base = dict(n_trials=4, n_jobs=1, objectives=["val_accuracy"], directions=["maximize"], study_name="s",
                storage="sqlite:///x.db", sampler="tpe", seed=0, pruner=None, min_epochs=1, reduction_factor=3,
                max_epochs=4)
    return SearchSettings(**{**base, **changes})


@pytest.mark.parametrize("changes,fragment", [
    ({"objectives": ["test_accuracy"]}, "never on test"),
    ({"pruner": "median", "objectives": ["val_accuracy", "train_seconds"], "directions": ["maximize", "minimize"]},
     "pruning needs one objective"),
    ({"directions": ["upward"]}, "maximize or minimize"),
    ({"storage": "optuna.db"}, "a journal file path ending in .log"),
    ({"sampler": "cma"}, "tpe, random, nsgaii"),
    ({"n_trials": 0}, "n_trials=0 is not allowed"),
])
def test_bad_search_settings_are_one_line(changes: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        check(settings(**changes))
    assert fragment in str(e.value) and str(e.value).startswith("hydra.sweeper.") and "\n" not in str(e.value)


def test_a_trials_outcome_comes_from_its_members_summary(tmp_path: Path) -> None:
    s = settings(objectives=["val_accuracy", "train_seconds"], directions=["maximize", "minimize"])
    assert trial_outcome(tmp_path, s) is None  # no summary: the member failed or was killed
    (tmp_path / "summary.json").write_text(json.dumps({"metrics": {"best_val_accuracy": 0.9, "train_seconds": 3.0}}))
    assert trial_outcome(tmp_path, s) == ([0.9, 3.0], False)
    (tmp_path / "summary.json").write_text(json.dumps({"metrics": {"best_val_accuracy": 0.5, "train_seconds": 1.0},
                                                       "pruned_at_epoch": 2}))
    assert trial_outcome(tmp_path, s) == ([0.5, 1.0], True)
    (tmp_path / "summary.json").write_text(json.dumps({"metrics": {"best_val_accuracy": float("nan"),
                                                                   "train_seconds": 1.0}}))
    assert trial_outcome(tmp_path, s) is None


def test_the_pareto_front_keeps_exactly_the_undominated() -> None:
    info = SweepInfo("p", "sqlite:///x", "e", "n", "/tmp", search={"objectives": ["val_accuracy", "train_seconds"],
                                                                  "directions": ["maximize", "minimize"]})
    runs = [("a", 0.90, 5.0), ("b", 0.95, 9.0), ("c", 0.85, 9.5), ("d", 0.90, 4.0), ("e", 0.99, 20.0)]
    children = [{"name": n, "run_id": n, "status": "FINISHED", "metrics": {"best_val_accuracy": v, "train_seconds": t}}
                for n, v, t in runs] + [{"name": "f", "run_id": "f", "status": "FAILED", "metrics": {}}]
    result = pareto(children, info)
    assert result is not None and [r["name"] for r in result.front] == ["e", "b", "d"]  # best val_accuracy first
    assert len(result.points) == 5
    assert pareto(children, SweepInfo("p", "u", "e", "n", "/tmp", search={"objectives": ["val_accuracy"]})) is None


def test_resume_rewrites_the_command_into_the_sweeps_own(tmp_path: Path) -> None:
    info = SweepInfo("parent", "sqlite:///x", "e", "sweep", str(tmp_path))
    info.save()
    (tmp_path / "multirun.yaml").write_text("hydra:\n  sweeper:\n"
                                            "    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper\n"
                                            "  overrides:\n    hydra: [hydra.sweep.dir=old, hydra/launcher=joblib]\n"
                                            "    task: ['seed=0,1']\n")
    resumed = resume_command(["--multirun", f"resume={tmp_path}", "trainer.threads=1"])
    assert resumed is not None and not resumed.done and resumed.sweep_dir == tmp_path.resolve()
    assert resumed.argv == ["--multirun", "hydra/launcher=joblib", "seed=0,1", "trainer.threads=1",
                            f"hydra.sweep.dir={tmp_path.resolve()}"]
    info.completed = True
    info.save()
    assert resume_command(["--multirun", f"resume={tmp_path}"]).done  # a grid that ran to its end has nothing left
    with pytest.raises(ConfigError, match="holds no mlflow_sweep.json") as e:
        resume_command(["--multirun", f"resume={tmp_path / 'multirun.yaml'}"])
    assert "\n" not in str(e.value)
    assert resume_command([f"resume={tmp_path}"]) is None  # a single run's resume is not a sweep's


@pytest.mark.slow
def test_bench_search_pairs_each_pruner_with_the_unpruned_search(tmp_path: Path) -> None:
    """``scripts/bench.py search`` (whose figures docs/sweeps.md quotes) on a tiny search: every variant runs, pairs are
    compared. One pruner here (each search is a sweep of its own); without ``--pruner`` a round is each of
    docs/sweeps.md's pruners against the unpruned search."""
    variants = load(TRAIN_SCRIPT.parent / "bench_sweeps.py", "bench_sweeps").search_variants
    assert variants(None) == {"unpruned": None, "hyperband": "hyperband", "successive_halving": "successive_halving"}
    out = tmp_path / "bench-search.json"
    proc = subprocess.run([PYTHON, str(TRAIN_SCRIPT.parent / "bench.py"), "search", "--trials", "3", "--epochs", "2",
                           "--repeats", "1", "--pruner", "hyperband", "--json", str(out), "data.train_limit=1000",
                           "data.val_size=500"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"unpruned", "hyperband"} and result["pruners"] == ["hyperband"]
    unpruned = result["runs"]["unpruned"][0]
    assert unpruned["epochs"] == 6 and unpruned["pruned"] == 0 and unpruned["finished"] == 3
    for pruner in ("hyperband",):
        row = result["runs"][pruner][0]
        assert row["finished"] == 3 and row["epochs"] <= 6
        assert result["paired"][pruner]["median_epoch_fraction"] == row["epochs"] / 6
    assert "points below the unpruned search's" in proc.stdout


@pytest.mark.slow
def test_bench_search_jobs_pairs_the_batch_and_the_asynchronous_search(tmp_path: Path) -> None:
    """``scripts/bench.py search --jobs 2`` (whose figures docs/sweeps.md quotes): both searches with the same seed
    and pruner, each one's workers_busy_fraction as its parent logged it, the pair compared."""
    out = tmp_path / "bench-search.json"
    proc = subprocess.run([PYTHON, str(TRAIN_SCRIPT.parent / "bench.py"), "search", "--jobs", "2", "--trials", "4",
                           "--epochs", "2", "--repeats", "1", "--json", str(out), "data.train_limit=1000",
                           "data.val_size=500"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"batch", "async"} and result["jobs"] == 2
    assert result["pruners"] == ["successive_halving"]
    for row in (result["runs"]["batch"][0], result["runs"]["async"][0]):
        assert row["finished"] == 4 and row["seed"] == 0 and 0 < row["busy_fraction"] <= 1
    paired = result["paired"]["async"]
    assert paired["median_busy_fraction"] == {k: v[0]["busy_fraction"] for k, v in result["runs"].items()}
    async_s, batch_s = result["runs"]["async"][0]["seconds"], result["runs"]["batch"][0]["seconds"]
    assert paired["median_time_ratio"] == pytest.approx(async_s / batch_s)
    assert "keeps them" in proc.stdout and "of the batch-synchronous search's time" in proc.stdout
    bad = run_script("bench", "search", "--jobs", "2", "--pruner", "median", "hyperband")  # its main() here
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [
        "error: search --jobs compares two searches with the same pruner: give one --pruner"]
