"""How this project writes runs into MLflow: tag names, MLflow's limits, and values MLflow refuses.

One place for each, so the tracker, the administration of runs and the
sweep summary cannot disagree.
"""

from __future__ import annotations

from typing import Mapping

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

PARENT_RUN_TAG = MLFLOW_PARENT_RUN_ID  # what makes the UI nest a run under its sweep
PROCESS_TAG = "process"  # host:pid:start of the process that owns a RUNNING run
OUTPUT_DIR_TAG = "hydra_output_dir"  # where a run's files are
FAILURE_TAG = "failure_reason"  # why a run ended FAILED or KILLED
OFFLINE_TAG = "tracking_interrupted"  # when and why MLflow stopped answering during the run
# A run (or sweep member) whose process vanished never closed itself; whoever finds it closes it with this.
KILLED_REASON = "the run's process ended without closing it (killed from outside: kill -9, out of memory, node lost)"

MAX_TAG_CHARS = 8000  # MLflow refuses longer tag values
MAX_NAME_CHARS = 250  # run names
MAX_PARAMS_PER_BATCH = 100  # MLflow's limits for one log_batch call
MAX_METRICS_PER_BATCH = 1000


def cap_tag(value: str) -> str:
    """``value`` cut to what MLflow stores in a tag."""
    return value[:MAX_TAG_CHARS]


def finite(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics that are numbers: some stores refuse NaN, and a NaN says nothing a missing value does not."""
    return {k: v for k, v in metrics.items() if v == v}  # NaN is the one value unequal to itself
