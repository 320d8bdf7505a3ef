"""What MLflow prints on a run's console: only warnings, unless the user asks for more.

A run prints the project's own lines and ends with its result line. By
default MLflow adds INFO lines (``Creating initial MLflow database
tables``, ``Validating input example against model signature``) and tqdm
bars for every artifact transfer (``Downloading artifacts`` while a model
is *saved*, once per sweep member) -- nothing a user can act on, and a bar
starts tqdm's monitor thread, which outlives it and would be alive when
the next run forks (see :mod:`mnist_np.common.forking`).

Both go through MLflow's own documented switches, set here as defaults
before MLflow is first imported (this module is imported first by
:mod:`mnist_np.tracking`); a value the user set wins, so
``MLFLOW_LOGGING_LEVEL=INFO`` and ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=true``
bring them back. Standard library only.
"""

from __future__ import annotations

import os

QUIET_DEFAULTS = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def quiet_mlflow() -> None:
    """Set MLflow's console switches to their quiet defaults, leaving any the user set."""
    for key, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(key, value)


quiet_mlflow()
