"""What users see in the MLflow UI, checked in a real headless Chromium.

One module-scoped setup serves every test here: a real ``mlflow server`` on
loopback, a 3-member sweep logged to it by ``scripts/train.py --multirun``
(a subprocess, as users run it), and one browser page. The tests then read
the UI the way a user would -- the runs table, the compare page, a run's
artifacts, the Model Registry's page of the sweep's champion -- and save a screenshot of each, in the test's temp dir
and in ``outputs/browser-test/`` (git-ignored) for a human to look at.

Skipped, with the reason, only when no Chromium binary can be found
(``.ci/run`` installs Debian's ``chromium`` when it runs as root).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from mlflow.tracking import MlflowClient

from conftest import PYTHON, TRAIN_SCRIPT
from helpers.browser import NO_CHROMIUM, MlflowUI, chromium, find_chromium
from helpers.servers import start_mlflow_server
from mnist_np.common.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow
EXPERIMENT = "browser-test"
MODEL = "browser-digits"
HIDDEN_SIZES = ("16", "32", "64")
SCREENSHOTS = PROJECT_ROOT / "outputs" / "browser-test"


@dataclass
class UiSweep:
    """The sweep as MLflow's API sees it, and the browser page to check it against."""

    ui: MlflowUI
    experiment_id: str
    parent: object  # mlflow.entities.Run
    children: list  # the members, mlflow.entities.Run
    shots: Path

    def screenshot(self, name: str) -> Path:
        """Save the page into the test's temp dir and copy it to outputs/browser-test/."""
        path = self.ui.screenshot(self.shots / name)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOTS / name)
        return path


@pytest.fixture(scope="module")
def ui_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiSweep]:
    executable = find_chromium()
    if executable is None:
        pytest.skip(NO_CHROMIUM)
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail("playwright is missing: it is in the test extra, pip install -e '.[test]'")
    root = tmp_path_factory.mktemp("browser")
    with start_mlflow_server(root / "server") as server:
        cmd = [
            PYTHON, str(TRAIN_SCRIPT), "--multirun", f"model.hidden_size={','.join(HIDDEN_SIZES)}",
            "data.train_limit=500", "data.val_size=500", "trainer.epochs=2", "trainer.progress=false",
            f"mlflow.tracking_uri={server.url}", f"mlflow.experiment_name={EXPERIMENT}", f"mlflow.register_as={MODEL}",
            f"hydra.sweep.dir={root / 'sweep'}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:] + server.log_tail()
        client = MlflowClient(server.url)
        experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
        runs = client.search_runs([experiment_id])
        parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == len(HIDDEN_SIZES) == len(runs) - 1
        with chromium(executable) as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            yield UiSweep(MlflowUI(page, server.url), experiment_id, parent, children, root / "screenshots")


def test_runs_table_shows_the_parent_with_its_three_children(ui_sweep: UiSweep) -> None:
    s = ui_sweep
    child_names = sorted(c.info.run_name for c in s.children)
    assert child_names == [f"mlp{h}-sgd-lr0.1-bs128" for h in sorted(HIDDEN_SIZES, key=int)]
    collapsed, expanded = s.ui.runs_table(s.experiment_id, s.parent.info.run_name, child_names)
    s.screenshot("runs-table.png")
    # Nested: before the parent is expanded only the parent shows, then its children below it.
    assert collapsed == [s.parent.info.run_name]
    assert expanded[0] == s.parent.info.run_name and sorted(expanded[1:]) == child_names


def test_compare_page_shows_the_swept_parameter_and_accuracies(ui_sweep: UiSweep) -> None:
    s = ui_sweep
    table = s.ui.compare(s.experiment_id, [c.info.run_id for c in s.children], ["val_accuracy", "test_accuracy"])
    s.screenshot("compare-runs.png")
    by_name = {c.info.run_name: c for c in s.children}
    assert sorted(table.run_names) == sorted(by_name)
    # Every column holds its own run's values: the swept size and both accuracies.
    assert table.params["model.hidden_size"] == [by_name[n].data.params["model.hidden_size"] for n in table.run_names]
    assert sorted(table.params["model.hidden_size"], key=int) == list(HIDDEN_SIZES)
    assert table.params["data.train_limit"] == ["500"] * 3  # the whole resolved config is there
    for metric in ("val_accuracy", "test_accuracy"):
        shown = [float(v) for v in table.metrics[metric]]
        logged = [by_name[n].data.metrics[metric] for n in table.run_names]
        assert shown == pytest.approx(logged, abs=6e-4), metric  # the UI rounds to 3 decimals


def test_a_childs_artifacts_pane_lists_config_weights_and_plots(ui_sweep: UiSweep) -> None:
    s = ui_sweep
    child = s.children[0]
    entries = s.ui.artifacts(s.experiment_id, child.info.run_id, open_file=("plots", "confusion_matrix.png"))
    s.screenshot("artifacts.png")
    assert {"config", "weights", "plots"} <= set(entries), entries
    assert "train.log" in entries  # and the files logged beside the folders


def test_the_model_registry_shows_the_champion_version(ui_sweep: UiSweep) -> None:
    s = ui_sweep
    client = MlflowClient(s.ui.base_url, registry_uri=s.ui.base_url)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == s.parent.data.tags["best_run_id"]
    table = s.ui.registered_model(MODEL, champion.version)
    s.screenshot("model-registry.png")
    assert f"Version {champion.version}" in table and "champion" in table, table
