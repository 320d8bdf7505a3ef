"""CPU, memory, disk and network use over a run's training, by MLflow's own system-metrics monitor (psutil).

``mlflow.log_system_metrics=true`` logs ``system/cpu_utilization_percentage``,
``system/system_memory_usage_megabytes``, ``system/disk_usage_percentage`` and
the rest every few seconds while the run trains, as MLflow's
``start_run(log_system_metrics=True)`` would -- but for a run this project
opened with its own client, and stopped without waiting on a server that
went away: a dead tracking server must not hold up the end of a run.

The monitor is a thread, and the run forks processes while it runs (shard
processes, the augmentation worker, the figure children): it is registered
with :func:`mnist_np.common.forking.pausable`, so that every fork stops it
first and starts it again afterwards, in the parent. Its steps go on where
they were; a pause costs the thread's check of the run's status (one store
call) and restarts its sampling interval.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from mnist_np.common.forking import pausable

log = logging.getLogger(__name__)

SAMPLING_SECONDS = 5.0  # one sample logged per interval (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it)
STOP_SECONDS = 5.0  # how long the end of a run waits for the monitor's last upload
PAUSE_SECONDS = 5.0  # how long a fork waits for the monitor to stop (it may be in a call to a slow server)


@contextmanager
def system_metrics(tracking_uri: str, run_id: str, enabled: bool, resumed: bool = False) -> Iterator[None]:
    """Log system metrics to run ``run_id`` while inside (nothing when not ``enabled``).

    ``resumed``: the run logged system metrics before; their steps go on from there.
    A monitor that cannot start (no psutil, the store refuses) is a warning, never an error.
    """
    if not enabled:
        yield
        return
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # MLflow reports at INFO that it found no GPU and when it starts and stops: not news in a run's log.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        monitor = SystemMetricsMonitor(run_id, sampling_interval=SAMPLING_SECONDS, resume_logging=resumed,
                                       tracking_uri=tracking_uri)
        monitor.start()
    except Exception as e:  # noqa: BLE001 -- e.g. psutil missing: the run trains without them
        log.warning("system metrics are not logged: %s", e)
        yield
        return
    try:
        with pausable("MLflow's system-metrics monitor", lambda: _pause(monitor), lambda: _resume(monitor)):
            yield
    finally:
        _stop(monitor)


def _pause(monitor: object) -> None:
    """End the monitor's thread for a fork; its samples and step stay in ``monitor``, for :func:`_resume`.

    The event cuts its wait for the next sample short; it then asks the store for the run's status (one call)
    and ends; busy sampling or uploading, it ends after that. One that takes longer than :data:`PAUSE_SECONDS`
    (a server that does not answer) is left running, and the fork names it.
    """
    monitor._shutdown_event.set()  # type: ignore[attr-defined]
    thread = monitor._process  # type: ignore[attr-defined]
    if thread is not None:
        thread.join(PAUSE_SECONDS)


def _resume(monitor: object) -> None:
    """A new thread for the monitor (same samples and step), unless the old one never ended: it then goes on."""
    monitor._shutdown_event.clear()  # type: ignore[attr-defined]
    thread = monitor._process  # type: ignore[attr-defined]
    if thread is None or not thread.is_alive():
        monitor.start()  # type: ignore[attr-defined]


def _stop(monitor: object) -> None:
    """Stop the monitor's thread and send what it sampled, with a last sample; give up after :data:`STOP_SECONDS` (a
    server gone)."""
    # SystemMetricsMonitor.finish() joins its thread without a timeout; its thread may be
    # inside a call to a server that no longer answers (retried for minutes).
    monitor._shutdown_event.set()  # type: ignore[attr-defined]
    thread = monitor._process  # type: ignore[attr-defined]
    if thread is not None:
        thread.join(STOP_SECONDS)
        if thread.is_alive():
            log.warning("system metrics: the monitor did not stop within %.0f s (tracking server "
                        "unreachable?); left behind", STOP_SECONDS)
            return
    try:
        # The samples since the last upload, with one taken now: a run shorter than the interval still gets a point.
        monitor.collect_metrics()  # type: ignore[attr-defined]
        monitor.publish_metrics(monitor.aggregate_metrics())  # type: ignore[attr-defined]
        monitor.mlflow_logger.flush()  # type: ignore[attr-defined]
    except Exception as e:  # noqa: BLE001 -- the run's own metrics are safe; only the last sample is lost
        log.warning("system metrics: the last sample was not logged: %s", e)
