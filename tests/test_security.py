"""Security: nothing read from a run can run code, servers bind loopback, and a shared server lets nobody in unasked.

- every ``np.load`` in the package and scripts refuses pickles (checked in
  the source), and a pickled payload in a weights file or checkpoint is
  refused with one line, its code never run;
- a config read back from a run passes the schema first: ``_target_``,
  unknown keys and YAML tags that construct objects are refused (that
  ``conf/`` itself names no code is checked in test_config.py);
- ``make ui`` and every server the project starts bind 127.0.0.1;
- the docs' basic-auth server (docs/clusters.md), started from its own ``.ini``, turns away
  a run without a login, and a user writing into someone else's experiment;
- ``predict.py`` refuses files that are not images.
"""

from __future__ import annotations

import ast
import base64
import json
import re
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import PYTHON, TRAIN_SCRIPT, small_overrides
from helpers.docs import page
from mnist_np.common.paths import PROJECT_ROOT
from mnist_np.experiment.config.compose import compose, load_run_config
from mnist_np.experiment.config.schema import ConfigError
from mnist_np.experiment.run.single import run
from mnist_np.inference import InferenceError, load_images
from mnist_np.nn.weights import load_weights
from mnist_np.train import checkpoint
from mnist_np.train.checkpoint import load_state

SOURCES = sorted([*(PROJECT_ROOT / "mnist_np").rglob("*.py"), *(PROJECT_ROOT / "scripts").glob("*.py")])
READERS = {"load_weights": load_weights, "load_state": load_state}
CLUSTERS = page("clusters.md")  # where the docs set up a shared server with logins


class Payload:
    """Unpickling this creates ``marker``: proof that a file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# --- nothing read from a run is unpickled or executed -------------------------------


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _name(node: ast.AST) -> str:
    return ast.unparse(node)


@pytest.mark.fault("security", "source")
def test_the_code_never_unpickles_or_evaluates() -> None:
    offenders, loads = [], 0
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree):
            fn = _name(call.func)
            if fn in ("np.load", "numpy.load"):
                loads += 1
                flag = [k for k in call.keywords if k.arg == "allow_pickle"]
                if not (flag and isinstance(flag[0].value, ast.Constant) and flag[0].value.value is False):
                    offenders.append(f"{path.name}:{call.lineno} {fn} without allow_pickle=False")
            if fn in ("eval", "exec", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "instantiate",
                      "hydra.utils.instantiate"):
                offenders.append(f"{path.name}:{call.lineno} {fn}")
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = ([a.name for a in node.names]
                         + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else []))
                if any(n.split(".")[0] in ("pickle", "cloudpickle", "dill", "marshal", "shelve") for n in names):
                    offenders.append(f"{path.name}:{node.lineno} imports {names}")
    assert offenders == []
    assert loads >= 2  # the check saw the real loads (nn/weights.py, tracking/pyfunc_model.py)


def evil_file(path: Path, marker: Path, kind: str = "weights") -> Path:
    """A weights file or checkpoint whose first array is a pickle that creates ``marker`` when loaded."""
    payload = np.array([Payload(marker)], dtype=object)
    if kind == "weights":
        np.savez(path, W1=payload, b1=np.zeros(10), config=np.array(""))
    else:  # what load_state reads first is fine; the parameters are the payload
        meta = {"version": checkpoint.STATE_VERSION, "epoch": 1, "run_id": "", "rng_states": {}, "history": [],
                "best_epoch": 1, "best_score": None, "since_best": 0, "stopped_early": False}
        np.savez(path, **{"param/W1": payload, "meta": np.array(json.dumps(meta)), "config": np.array("")})
    return path


@pytest.mark.parametrize("reader", ["load_weights", "load_state"])
@pytest.mark.fault("security", "refused")
def test_a_pickled_payload_is_refused_and_never_runs(reader: str, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    evil = evil_file(tmp_path / "evil.npz", marker, "weights" if reader == "load_weights" else "checkpoint")
    with pytest.raises(ValueError) as e:
        READERS[reader](evil)
    assert str(e.value) == f"{evil}: not a file of plain arrays (reading it would take pickle, which is never used)"
    assert not marker.exists()


@pytest.mark.fault("security", "refused")
def test_scripts_refuse_pickled_files(tracking_uri: str, tmp_path: Path) -> None:
    from PIL import Image

    marker = tmp_path / "payload-ran"
    evil = evil_file(tmp_path / "final.npz", marker)
    png = tmp_path / "digit.png"
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(png)
    proc = subprocess.run([PYTHON, str(TRAIN_SCRIPT.parent / "predict.py"), str(evil), str(png)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert (proc.stderr
            == f"error: {evil}: not a file of plain arrays (reading it would take pickle, which is never used)\n")

    # A run dir whose checkpoint was swapped for a pickle: resume refuses it before training.
    out = tmp_path / "run"
    run(compose(small_overrides(tracking_uri, "trainer.epochs=1", "mlflow.log_plots=false")), output_dir=out)
    (out / "summary.json").unlink()  # so it looks unfinished
    evil_file(latest := checkpoint.latest_checkpoint(out / "checkpoints"), marker, "checkpoint")
    with pytest.raises(ConfigError,
                       match=f"expected a run with a readable checkpoint .*{latest.name}: not a file of plain arrays"):
        run(compose(small_overrides(tracking_uri, f"resume={out}")))
    assert not marker.exists()


RUN_CONFIG = None


def _run_config() -> str:
    from omegaconf import OmegaConf

    global RUN_CONFIG
    RUN_CONFIG = RUN_CONFIG or OmegaConf.to_yaml(compose(), resolve=True)
    return RUN_CONFIG


TAMPERED = {
    "_target_ at the top": lambda t, m: t + "_target_: os.system\n",
    "_target_ in model": lambda t, m: t.replace("model:\n", "model:\n  _target_: subprocess.call\n", 1),
    "_target_ in optimizer": lambda t, m: t.replace("optimizer:\n", "optimizer:\n  _target_: builtins.exec\n", 1),
    "an unknown key": lambda t, m: t + "callbacks: [backdoor]\n",
    "a python/object YAML tag": lambda t, m: t.replace("seed: 0",
                                                       f"seed: !!python/object/apply:os.system ['touch {m}']", 1),
    "a python/name YAML tag": lambda t, m: t.replace("name: mlp", "name: !!python/name:os.system", 1),
}


@pytest.mark.parametrize("how", sorted(TAMPERED))
@pytest.mark.fault("security", "refused")
def test_a_tampered_run_config_is_refused(how: str, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    text = TAMPERED[how](_run_config(), marker)
    assert text != _run_config()
    with pytest.raises(ConfigError) as e:
        load_run_config(text, source="config/config.yaml")
    assert str(e.value).startswith("config/config.yaml: ") and "\n" not in str(e.value)

    # The same file in a run dir, as resume= reads it: refused before any store is touched.
    out = tmp_path / "run"
    (out / "config").mkdir(parents=True)
    (out / "config" / "config.yaml").write_text(text)
    store = tmp_path / "store" / "mlflow.db"
    (out / "mlflow_run.json").write_text(json.dumps({"run_id": "0" * 32, "tracking_uri": f"sqlite:///{store}",
                                                     "experiment_name": "tests"}))
    with pytest.raises(ConfigError):
        run(compose([f"resume={out}", f"mlflow.tracking_uri=sqlite:///{store}"]))
    assert not marker.exists() and not store.parent.exists()


# --- servers bind loopback ------------------------------------------------------------


@pytest.mark.fault("security", "loopback")
def test_servers_bind_loopback() -> None:
    from helpers import servers

    dry = subprocess.run(["make", "-n", "ui"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and "--host 127.0.0.1" in dry.stdout, dry.stdout
    custom = subprocess.run(["make", "-n", "ui", "HOST=0.0.0.0"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=60)
    assert "--host 0.0.0.0" in custom.stdout  # only when asked
    docs = subprocess.run(["make", "-n", "docs"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert docs.returncode == 0 and "-a 127.0.0.1:8000" in docs.stdout, docs.stdout  # the docs site too
    assert servers.LOOPBACK == "127.0.0.1"
    import inspect

    assert inspect.signature(servers.start_mlflow_server).parameters["host"].default == "127.0.0.1"
    code = [PROJECT_ROOT / "Makefile", *SOURCES]
    assert [p.name for p in code if "0.0.0.0" in p.read_text()] == []


# --- a shared server with logins, as the docs set it up ----------------------------


def _readme_ini(root: Path) -> Path:
    """The docs' basic_auth.ini, with its /srv/mlflow paths moved into ``root``."""
    (block,) = re.findall(r"```ini\n(.*?)```", CLUSTERS, re.S)
    assert "default_permission = READ" in block and "admin_username = admin" in block
    assert "auth_cache_ttl_seconds = 60" in block  # one password hash per login and minute, not per request
    ini = root / "basic_auth.ini"
    ini.write_text(block.replace("/srv/mlflow", str(root)))
    return ini


@pytest.mark.slow
@pytest.mark.fault("security", "logins")
def test_the_readmes_basic_auth_server_lets_nobody_in_unasked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("flask_wtf", reason="mlflow[auth] (the test extra) is needed for --app-name basic-auth")
    from mlflow.tracking import MlflowClient

    from helpers.servers import start_mlflow_server
    from mnist_np.tracking.tracker import MlflowTracker
    from mnist_np.tracking.uris import TrackingUnavailable

    assert "mlflow server --app-name basic-auth" in CLUSTERS and "MLFLOW_TRACKING_USERNAME" in CLUSTERS
    root = tmp_path / "srv"
    root.mkdir()
    admin_password = "admin-" + "x" * 20
    with monkeypatch.context() as env:  # the server's environment, as the docs export it
        env.setenv("MLFLOW_AUTH_CONFIG_PATH", str(_readme_ini(root)))
        env.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", admin_password)
        env.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", "k" * 32)
        server = start_mlflow_server(root, extra_args=("--app-name", "basic-auth"))
    with server:
        def create_user(name: str, password: str) -> None:  # the docs' curl, in Python
            login = base64.b64encode(f"admin:{admin_password}".encode()).decode()
            req = urllib.request.Request(f"{server.url}/api/2.0/mlflow/users/create", method="POST",
                                         data=json.dumps({"username": name, "password": password}).encode(),
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Basic {login}"})
            with urllib.request.urlopen(req, timeout=30) as response:
                assert json.load(response)["user"]["username"] == name

        create_user("alice", "alice-password-1")
        create_user("bob", "bob-password-12")

        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        with pytest.raises(TrackingUnavailable) as anonymous:
            MlflowTracker(server.url, "tests")
        assert str(anonymous.value) == (f"MLflow server {server.url} refused the request (401: not authenticated); "
                                        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to "
                                        "a user of that server")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        with pytest.raises(TrackingUnavailable, match=r"\(401: not authenticated\)"):
            MlflowTracker(server.url, "tests")

        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "alice-password-1")
        out = tmp_path / "alice"
        result = run(compose(small_overrides(server.url, "trainer.epochs=1", "mlflow.log_plots=false")), output_dir=out)
        client = MlflowClient(server.url)
        assert client.get_run(result.run_id).info.status == "FINISHED"

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "bob-password-12")
        with pytest.raises(TrackingUnavailable) as bob:
            run(compose(small_overrides(server.url, "trainer.epochs=1", "mlflow.log_plots=false")),
                output_dir=tmp_path / "bob")
        assert str(bob.value) == (f"MLflow server {server.url} refused the request (403: user bob lacks permission); "
                                  "ask its admin for EDIT on the experiment")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "alice-password-1")
        runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
        assert [r.info.run_id for r in runs] == [result.run_id]  # bob's attempt left nothing


# --- predict.py refuses what is not an image ------------------------------------------

NOT_IMAGES = {
    "empty.png": b"",
    "page.html": b"<html><body>7</body></html>",
    "noise.jpg": bytes(range(256)) * 12,
    "truncated.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
    "weights.npz": b"PK\x03\x04" + b"\x00" * 60,
    "script.sh": b"#!/bin/sh\nrm -rf /\n",
}


@pytest.mark.parametrize("name", sorted(NOT_IMAGES))
@pytest.mark.fault("security", "not an image")
def test_predict_refuses_files_that_are_not_images(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(NOT_IMAGES[name])
    with pytest.raises(InferenceError) as e:
        load_images([str(path)])
    assert str(e.value) == (f"{path}: neither an image nor an IDX file (accepted: images Pillow can open (PNG, JPEG, "
                            "...) and IDX image files (N, 28, 28), raw or .gz)")
