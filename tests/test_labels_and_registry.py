"""Results a team can act on: labels and notes on runs, and the Model Registry's champion served over HTTP.

Real SQLite stores in temp dirs, small data; sweeps and ``mlflow models
serve`` as subprocesses, as a user runs them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import PYTHON, TRAIN_SCRIPT, small_overrides
from helpers.scripts import run_script
from helpers.servers import free_port, is_healthy, mlflow_executable
from helpers.stores import migrated_store
from mnist_np import data
from mnist_np.experiment.config.compose import compose
from mnist_np.experiment.run.single import run
from mnist_np.inference import images_to_features
from mnist_np.tracking.conventions import NOTE_TAG, OWN_TAGS

PREDICT = TRAIN_SCRIPT.parent / "predict.py"


def test_labels_and_notes_are_searchable_tags(tracking_uri: str, tmp_path: Path) -> None:
    result = run(compose(small_overrides(tracking_uri, "trainer.epochs=1", "mlflow.log_plots=false",
                                         "tags=[baseline,lr-study]", "notes=first try with the default recipe")),
                 output_dir=tmp_path / "run")
    client = MlflowClient(tracking_uri)
    r = client.get_run(result.run_id)
    assert r.data.tags["baseline"] == "true" and r.data.tags["lr-study"] == "true"
    assert r.data.tags[NOTE_TAG] == "first try with the default recipe"  # the run's description in the UI
    exp = r.info.experiment_id
    assert [x.info.run_id for x in client.search_runs([exp], "tags.`lr-study` = 'true'")] == [result.run_id]
    assert client.search_runs([exp], "tags.baseline = 'true' and tags.`other` = 'true'") == []
    compare = ["tests", "--tracking-uri", tracking_uri]  # compare.py's main() here; test_sweeps runs the command
    found = run_script("compare", *compare, "--filter", "tags.`lr-study` = 'true'")
    assert found.returncode == 0 and found.stdout.splitlines()[0].startswith("experiment 'tests': 1 runs"), found.stderr
    assert r.info.run_name in found.stdout
    bad = run_script("compare", *compare, "--filter", "tags.lr-study = 'true'")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: --filter ")
    # Labels cannot take the project's own tag names: every bare tag a run sets is in OWN_TAGS.
    own = {k for k in r.data.tags if "." not in k} - {"baseline", "lr-study"}
    assert own <= OWN_TAGS, own - OWN_TAGS
    # System metrics (on by default): MLflow's own monitor, at least the sample taken as the training ends.
    cpu = client.get_metric_history(result.run_id, "system/cpu_utilization_percentage")
    assert cpu and all(0 <= m.value <= 100 for m in cpu)
    assert client.get_metric_history(result.run_id, "system/system_memory_usage_megabytes")[-1].value > 0


@pytest.mark.slow
def test_a_sweep_labels_its_parent_and_members(tmp_path: Path) -> None:
    uri = migrated_store(tmp_path / "store" / "mlflow.db")
    proc = subprocess.run([PYTHON, str(TRAIN_SCRIPT), "--multirun", "seed=0,1", "tags=[lr-study]", "notes=two seeds",
                           f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=labels", "mlflow.log_plots=false",
                           "data.train_limit=1000", "data.val_size=500", "trainer.epochs=1", "trainer.progress=false",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("labels").experiment_id], "tags.`lr-study` = 'true'")
    assert len(runs) == 3 and all(r.data.tags[NOTE_TAG] == "two seeds" for r in runs)  # the parent and both members
    assert sum("mlflow.parentRunId" not in r.data.tags for r in runs) == 1


def test_a_single_run_registers_a_new_version_each_time(tracking_uri: str, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    ids = []
    for i in range(2):
        cfg = compose(small_overrides(tracking_uri, "trainer.epochs=1", "mlflow.log_plots=false",
                                      "mlflow.register_as=solo", f"seed={i}", "mlflow.log_system_metrics=false"))
        ids.append(run(cfg, output_dir=tmp_path / str(i)).run_id)
    assert not [k for k in client.get_run(ids[0]).data.metrics if k.startswith("system/")]
    versions = sorted(client.search_model_versions("name = 'solo'"), key=lambda v: int(v.version))
    assert [(str(v.version), v.run_id) for v in versions] == [("1", ids[0]), ("2", ids[1])]
    assert (float(versions[1].tags["val_accuracy"])
            == pytest.approx(client.get_run(ids[1]).data.metrics["best_val_accuracy"], abs=1e-4))
    assert client.get_run(ids[0]).data.tags["registered_model"] == "solo/1"
    assert client.get_registered_model("solo").aliases == {}  # only a sweep names a champion


@pytest.mark.slow
def test_a_sweeps_best_member_is_the_champion_and_serves_over_http(tmp_path: Path) -> None:
    uri = migrated_store(tmp_path / "store" / "mlflow.db")
    proc = subprocess.run([PYTHON, str(TRAIN_SCRIPT), "--multirun", "model.hidden_size=16,32",
                           "mlflow.register_as=digits", f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=registry",
                           "mlflow.log_plots=false", "data.train_limit=3000", "data.val_size=1000", "trainer.epochs=1",
                           "trainer.progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri, registry_uri=uri)
    parent = next(r for r in client.search_runs([client.get_experiment_by_name("registry").experiment_id])
                  if "mlflow.parentRunId" not in r.data.tags)
    (version,) = client.search_model_versions("name = 'digits'")  # only the best member, not every member
    assert version.run_id == parent.data.tags["best_run_id"]
    assert str(client.get_model_version_by_alias("digits", "champion").version) == str(version.version)
    assert version.tags["sweep"] == parent.info.run_id
    best = client.get_run(version.run_id)
    assert version.tags["val_accuracy"] == f"{best.data.metrics['best_val_accuracy']:.4f}"
    assert version.tags["test_accuracy"] == f"{best.data.metrics['test_accuracy']:.4f}"
    assert parent.data.tags["champion"] == f"models:/digits/{version.version}"

    mnist = data.load_dataset("mnist")
    image = tmp_path / "digit.png"
    Image.fromarray(mnist.test_images[0]).save(image)
    predicted = run_script("predict", "models:/digits@champion", str(image), "--tracking-uri", uri)  # main() here
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    label = int(predicted.stdout.split("label ")[1].split()[0])
    unknown = subprocess.run([PYTHON, str(PREDICT), "models:/digits@nope", str(image), "--tracking-uri", uri],
                             capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: no registered model models:/digits@nope in ")
    assert unknown.stderr.count("\n") == 1

    # mlflow models serve, as docs/predicting.md shows it, answering one MNIST image with its label.
    port = free_port()
    # As in an activated venv (docs/predicting.md says so): `mlflow models serve` starts `uvicorn` from PATH.
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen([mlflow_executable(), "models", "serve", "-m", "models:/digits@champion",
                                   "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], stdout=out,
                                  stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not is_healthy(f"http://127.0.0.1:{port}") and time.monotonic() < deadline:
            assert server.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        x = images_to_features(mnist.test_images[:1])
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": x.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    (row,) = answer["predictions"]
    assert row["label"] == label and int(np.argmax([row[f"p{c}"] for c in range(10)])) == label
    assert label == int(mnist.test_labels[0])  # a 32-unit network after one epoch gets the first test digit right
