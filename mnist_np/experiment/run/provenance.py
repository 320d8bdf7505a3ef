"""What a run records about where it ran: library versions, BLAS and its threads, the git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy as np

from mnist_np.common.cores import available_cores
from mnist_np.common.paths import PROJECT_ROOT


def environment_tags() -> dict[str, str]:
    """Versions and threads that decide whether two runs can be bit-identical."""
    tags = {
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        from threadpoolctl import threadpool_info

        blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if blas:
            b = blas[0]
            tags["blas"] = f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')})"
            tags["blas_threads"] = str(b.get("num_threads"))
    except Exception:  # threadpoolctl is informative only
        pass
    tags.update(available_cores().tags())  # the cores found, what decided them, what each source said
    for var in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if os.environ.get(var):
            tags[f"env.{var}"] = os.environ[var]
    return tags


def git_tags(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """``mlflow.source.git.commit`` and whether the tree had uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=10)
        return {"mlflow.source.git.commit": commit.stdout.strip(), "git_dirty": str(bool(dirty.stdout.strip())).lower()}
    except (OSError, subprocess.SubprocessError):
        return {}
