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

PRUNED_TAG = "pruned_at_epoch"  # on a search member its pruner stopped (and in its summary.json)
REGISTERED_TAG = "registered_model"  # on a run whose model was registered: <model name>/<version>
CHAMPION_TAG = "champion"  # on a sweep's parent: models:/<name>/<version> of its best member
# The bare tag names this project sets on runs and parents (dotted ones -- mlflow.*, optuna.*,
# best.*, env.* -- are namespaces): a user's label (the config's ``tags``) may not take one.
OWN_TAGS = frozenset({
    PROCESS_TAG, OUTPUT_DIR_TAG, FAILURE_TAG, OFFLINE_TAG, "overrides", "host", "pid", "test_weights", "sweep_job_num",
    "sweep_dir", "sweeper", "launcher", "resumed", "resumed_from_epoch", "reproduces", "stopped_early", PRUNED_TAG,
    "warnings", "weights_sha256", "tested_weights_sha256", "members_failed", "members_finished", "best_run_id",
    "best_run_name", "pareto_run_ids", "numpy_version", "python_version", "platform", "blas", "blas_threads",
    "git_dirty", "train_shards", "cores", "cores_source", "cores_found", REGISTERED_TAG, CHAMPION_TAG,
})
NOTE_TAG = "mlflow.note.content"  # what MLflow's UI shows as a run's description
LABEL_VALUE = "true"  # a label is a tag <label>=true: searchable as tags.`<label>` = 'true'

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


def label_tags(labels: list[str] | tuple[str, ...], notes: str | None) -> dict[str, str]:
    """The config's ``tags`` and ``notes`` as MLflow tags: ``<label>=true`` each, the notes as the run's description."""
    tags = {label: LABEL_VALUE for label in labels}
    if notes:
        tags[NOTE_TAG] = cap_tag(notes)
    return tags
