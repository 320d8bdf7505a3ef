"""Administration of runs that no tracker of this process owns: closing the dead, replaying a journal.

Raw client calls, not journaled: they act on what MLflow holds (a run whose
process was killed, a run rebuilt from its output dir), not on a run this
process is writing.
"""

from __future__ import annotations

from typing import Sequence

from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from mnist_np.common.procs import is_dead
from mnist_np.tracking.client import MlflowError, log_batches, refusal
from mnist_np.tracking.conventions import FAILURE_TAG, KILLED_REASON, PROCESS_TAG, cap_tag


def close_run(client: MlflowClient, run_id: str, status: str, reason: str | None = None,
              end_time: int | None = None) -> None:
    """End ``run_id`` with ``status`` (FINISHED, FAILED, KILLED), the reason as its ``failure_reason`` tag."""
    if reason:
        client.set_tag(run_id, FAILURE_TAG, cap_tag(reason))
    client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.from_string(status)), end_time=end_time)


def reap_dead_runs(client: MlflowClient, experiment_id: str, reason: str = KILLED_REASON,
                   keep: str | None = None) -> list[str]:
    """Close (FAILED, with ``reason``) every RUNNING run of the experiment whose process is gone; returns their ids.

    Runs carry a ``process`` tag (see :mod:`mnist_np.common.procs`); runs of
    other hosts, runs without the tag, and ``keep`` are left alone.
    """
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    reaped = []
    for r in running:
        ident = r.data.tags.get(PROCESS_TAG)
        if ident and r.info.run_id != keep and is_dead(ident):
            try:
                close_run(client, r.info.run_id, "FAILED", f"{reason} (process {ident} is gone)")
            except MlflowError as e:
                if refusal(e) is None:
                    raise
                continue  # another user's run on a server with logins: theirs to close
            reaped.append(r.info.run_id)
    return reaped


def log_metric_values(client: MlflowClient, run_id: str, values: Sequence[tuple[str, float, int, int]]) -> None:
    """``(key, value, timestamp, step)`` tuples as they were journaled (a replay keeps the original timestamps)."""
    log_batches(client, run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in values])
