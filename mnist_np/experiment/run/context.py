"""What Hydra tells a job about itself, and the cores a job may use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mnist_np.common.cores import available_cores


@dataclass
class HydraContext:
    """What Hydra tells a job about itself (all empty outside ``@hydra.main``)."""

    output_dir: Path | None = None
    overrides: list[str] = field(default_factory=list)
    sweep_dir: Path | None = None  # set for --multirun members only
    job_num: int | None = None
    launcher: dict[str, Any] = field(default_factory=dict)


def hydra_context() -> HydraContext:
    """The Hydra output dir, overrides, and sweep membership of the current job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return HydraContext()
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    launcher = OmegaConf.to_container(hc.launcher, resolve=False) if hc.launcher else {}
    return HydraContext(
        output_dir=Path(hc.runtime.output_dir),
        overrides=list(hc.overrides.task),
        sweep_dir=Path(hc.sweep.dir) if multirun else None,
        job_num=hc.job.num if multirun else None,
        launcher=launcher if isinstance(launcher, dict) else {},
    )


def blas_threads(cfg: DictConfig, ctx: HydraContext) -> int:
    """Cores for this run: ``trainer.threads``, else the cores shared among parallel workers.

    The cores are those this process may really use (affinity mask, cgroup
    quota, Slurm: :func:`mnist_np.common.cores.available_cores`, logged as
    the run's ``cores*`` tags). joblib's ``n_jobs`` workers each get
    ``cores // n_jobs`` (at least 1) so a parallel sweep does not
    oversubscribe the machine; submitit jobs get their ``cpus_per_task``
    (1 when unset), as a cluster scheduler would.
    """
    if cfg.trainer.threads:
        return int(cfg.trainer.threads)
    cores = available_cores().count
    target = str(ctx.launcher.get("_target_", ""))
    if "n_jobs" in ctx.launcher and "joblib" in target.lower():
        n_jobs = int(ctx.launcher["n_jobs"])
        workers = n_jobs if n_jobs > 0 else max(cores + 1 + n_jobs, 1)
        return max(1, cores // workers)
    if "submitit" in target.lower():
        return int(ctx.launcher.get("cpus_per_task") or 1)
    return cores
