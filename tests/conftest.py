"""Shared fixtures: composed configs, a throwaway MLflow store, small training runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mnist_np.config import PROJECT_ROOT, compose

TRAIN_SCRIPT = PROJECT_ROOT / "scripts" / "train.py"
PYTHON = sys.executable


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    """A real MLflow store: a fresh SQLite file in a temp dir (artifacts beside it)."""
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


def small_overrides(tracking_uri: str, *extra: str) -> list[str]:
    """A run that takes seconds: 3,000 training images, 2 epochs, no progress bar."""
    return [
        f"mlflow.tracking_uri={tracking_uri}",
        "mlflow.experiment_name=tests",
        "data.train_limit=3000",
        "data.val_size=1000",
        "trainer.epochs=2",
        "trainer.progress=false",
        *extra,
    ]


@pytest.fixture
def small_cfg(tracking_uri: str):
    return compose(small_overrides(tracking_uri))
