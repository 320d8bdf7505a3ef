"""joblib workers of a parallel sweep fork from a server that has already imported what a run needs.

Each case runs in its own interpreter: loky's start method is process-wide state.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import PYTHON

PROBE = """
import json, os, sys
from joblib import Parallel, delayed
from mnist_np.experiment.sweep.session import warm_joblib_workers

def probe():
    import os, sys
    return {"mlflow": "mlflow" in sys.modules, "pyplot": "matplotlib.pyplot" in sys.modules,
            "runner": "mnist_np.experiment.run.single" in sys.modules, "ppid": os.getppid()}

launcher = json.loads(sys.argv[1])
preloaded = warm_joblib_workers(launcher)
workers = Parallel(n_jobs=2, backend="loky")(delayed(probe)() for _ in range(2))
print(json.dumps({"preloaded": preloaded, "parent": os.getpid(), "workers": workers}))
"""


def probe(launcher: dict) -> dict:
    proc = subprocess.run([PYTHON, "-c", PROBE, json.dumps(launcher)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the server is used on Linux only")
def test_joblib_workers_start_with_the_run_modules_imported() -> None:
    from mnist_np.experiment.sweep.session import JOBLIB_LAUNCHER

    out = probe({"_target_": JOBLIB_LAUNCHER, "n_jobs": 2})
    assert out["preloaded"] is True
    for worker in out["workers"]:
        # Nothing in the task imported them: the worker was forked with them loaded.
        assert worker["mlflow"] and worker["pyplot"] and worker["runner"], worker
        assert worker["ppid"] != out["parent"]  # a child of the server, not of the sweep's process


def test_other_launchers_get_plain_loky_workers() -> None:
    out = probe({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"})
    assert out["preloaded"] is False
    for worker in out["workers"]:
        assert not worker["mlflow"] and not worker["runner"], worker
