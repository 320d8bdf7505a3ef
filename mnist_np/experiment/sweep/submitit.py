"""Hydra's submitit launchers, except that a failed job never makes the sweep abandon the others.

Hydra's ``BaseSubmititLauncher.launch`` submits a batch as a job array and
collects the results in order; the first job that failed -- killed by the
OOM killer, its node lost, out of time for good -- raises there, and the
sweep ends while the array's other jobs go on running on the cluster,
unwatched, their results never summarised. These launchers submit the
same array with the same settings (the code below is Hydra's, MIT
licensed, but for its last line), then wait for *every* job and hand back
a failed ``JobReturn`` for one that failed, so that the sweep settles that
member (:func:`mnist_np.experiment.sweep.members.launch_members`) and goes on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, List, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

from mnist_np.experiment.sweep.launch import launcher_error
from mnist_np.experiment.sweep.workers import lanes

log = logging.getLogger(__name__)


class WaitingLauncher(BaseSubmititLauncher):
    """Submits like Hydra's submitit launcher; waits for every job, a failed one becoming a failed ``JobReturn``.

    ``workers=K`` (``hydra.launcher.workers``; default null, one cluster job
    per member) packs a sweep's members or a search's trials into K cluster
    jobs, each a loop that takes its next one as its last one ends
    (:meth:`run_workers`).
    """

    def __init__(self, workers: int | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.workers = workers  # not a submitit parameter: kept out of the executor's

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        executor = self._executor()
        job_params: List[Any] = []
        for idx, overrides in enumerate(job_overrides):
            idx = initial_job_idx + idx
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params))
        return [_result(job, overrides) for job, overrides in zip(jobs, job_overrides)]  # every job, in order

    def run_workers(self, workers: int, source: Any,
                    work: Callable[..., list[tuple[int, Any]]]) -> list[tuple[int, Any]]:
        """Loops over ``source`` (see :mod:`mnist_np.experiment.sweep.workers`): ``self.workers`` cluster jobs each a
        loop when set, else ``workers`` lanes here, each job a cluster job of its own."""
        if not self.workers:
            return lanes(workers, source, lambda overrides, number: self.launch([overrides], number)[0])
        loop = _WorkerLoop(self, source, work, Singleton.get_state())
        log.info("%d cluster jobs, each taking its next member as its last one ends", self.workers)
        jobs = self._executor().map_array(loop, range(self.workers))
        ran: list[tuple[int, Any]] = []
        for job in jobs:
            try:
                ran += job.results()[0]
            except Exception as e:  # noqa: BLE001 -- a worker job lost: what it was running is settled from its dir
                source.settle(launcher_error(e))
        return ran

    def _executor(self) -> Any:
        """The submitit executor, set up exactly as Hydra's launcher sets it up (its code, MIT licensed)."""
        import submitit

        _one_line_per_submitit_message()
        assert self.config is not None
        params = self.params
        init_params = {"folder": self.params["submitit_folder"]}
        specific_init_keys = {"max_num_timeout"}
        init_params.update(**{f"{self._EXECUTOR}_{x}": y for x, y in params.items() if x in specific_init_keys})
        init_keys = specific_init_keys | {"submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        params = {x if x in baseparams else f"{self._EXECUTOR}_{x}": y for x, y in params.items() if x not in init_keys}
        executor.update_parameters(**params)
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        return executor


def _one_line_per_submitit_message() -> None:
    """Each of submitit's messages once, in Hydra's log; the warning that ``sacct`` failed only the first time.

    submitit gives its logger two handlers of its own (stdout and stderr) and lets its records reach Hydra's
    root handler too: every warning showed three times. Without them Hydra's handler prints each once (and
    into the sweep's log file). On a cluster without accounting, submitit warns at every poll that ``sacct``
    failed (it then reads ``squeue``): the first such warning says it all.
    """
    logger = logging.getLogger("submitit")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    if not any(isinstance(f, _FirstOnly) for f in logger.filters):
        logger.addFilter(_FirstOnly("Bypassing sacct error"))


class _FirstOnly(logging.Filter):
    """Lets through the first record whose message holds ``text``, and every other record."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.seen = text, False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.text not in record.getMessage():
            return True
        first, self.seen = not self.seen, True
        return first


class _WorkerLoop:
    """What a packed cluster job runs: worker ``k``'s loop, each job run as the launcher runs one (picklable)."""

    def __init__(self, launcher: WaitingLauncher, source: Any, work: Callable[..., Any], state: Any) -> None:
        self.launcher, self.source, self.work, self.state = launcher, source, work, state

    def __call__(self, worker: int) -> list[tuple[int, Any]]:
        return self.work(self.source, worker, self._run)

    def _run(self, overrides: Sequence[str], number: int) -> JobReturn:
        return self.launcher(list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", self.state)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Preempted or out of time: Slurm requeues the same loop, which takes first the member it had not finished."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _result(job: Any, overrides: Sequence[str]) -> JobReturn:
    """The job's own ``JobReturn``; for a job that failed outside the member's code, a failed one saying why."""
    try:
        return job.results()[0]
    except Exception as e:  # noqa: BLE001 -- e.g. UncompletedJobError: killed (OOM), node lost, time out for good
        failed = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
        failed.return_value = e
        return failed


class WaitingSlurmLauncher(WaitingLauncher):
    _EXECUTOR = "slurm"


class WaitingLocalLauncher(WaitingLauncher):
    _EXECUTOR = "local"
