"""A guided search as a Hydra sweeper: Optuna (>= 4.7) asks, Hydra's launcher runs the batch, Optuna is told.

Thin on purpose: Optuna is the engine (sampler, pruner, storage), any
Hydra launcher (basic, joblib, submitit/Slurm) runs the members, and each
member is an ordinary run -- a child of the sweep's parent run in MLflow --
that reports to its trial after every epoch (:mod:`mnist_np.experiment.search.trial`).

How a trial ends is read from its member's output dir, so it does not
depend on the launcher handing anything back: a ``summary.json`` with
finite objectives is COMPLETE (PRUNED when it says ``pruned_at_epoch``);
anything else -- a diverged loss, an invalid value, an exception, a
process killed from outside -- is FAIL, and the study goes on until it
holds ``n_trials`` finished trials. A search killed outright is continued
by ``--multirun resume=<sweep dir | parent run id>``: the same study and
parent run, its interrupted trials marked FAIL.

Hydra finds sweeper plugins only in the ``hydra_plugins`` package, so the
class Hydra instantiates is a one-line subclass there
(``hydra_plugins/mnist_np_optuna``); this is the code.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from mnist_np.common.files import atomic_write_text
from mnist_np.experiment.config.schema import SEARCH_SWEEPER, SearchSweeperConfig
from mnist_np.experiment.search.outcome import fail_interrupted, finished, tell
from mnist_np.experiment.search.source import StudySource
from mnist_np.experiment.search.space import as_override, search_space
from mnist_np.experiment.search.study import SearchSettings, load_study, settings_from
from mnist_np.experiment.sweep.launch import job_composer, launch_members
from mnist_np.experiment.sweep.session import SESSION, note_workers
from mnist_np.experiment.sweep.workers import loop_count, note_taken, run_workers
from mnist_np.tracking.tracker import MlflowTracker

log = logging.getLogger(__name__)
SETTINGS_KEYS = [f.name for f in dataclasses.fields(SearchSweeperConfig) if f.name not in ("_target_", "params")]


class SearchSweeperImpl(Sweeper):
    """``hydra/sweeper=mnist_np_optuna``: the settings are ``hydra.sweeper``'s keys, the search space its ``params``."""

    def __init__(self, params: Any = None, **settings: Any) -> None:
        self.params = dict(params or {})
        self.settings = settings
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[Sequence[Any]]:
        assert self.config is not None and self.launcher is not None
        settings = settings_from(self._settings(), max_epochs=int(self.config.trainer.epochs))
        distributions, fixed = search_space(self.params, arguments)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(self.config))  # resume= reads it
        study = load_study(settings, create=True)
        self._announce(settings)
        interrupted = fail_interrupted(study)
        if interrupted:
            log.info("search: trials %s of a killed search marked FAIL", ", ".join(map(str, interrupted)))
        if settings.asynchronous:
            returns = self._asynchronous(settings, distributions, fixed, sweep_dir)
        else:
            returns = self._batches(study, settings, distributions, fixed, sweep_dir)
        write_results(study, settings, sweep_dir / "optimization_results.yaml")
        return returns

    def _asynchronous(self, settings: SearchSettings, distributions: dict[str, Any], fixed: list[str],
                      sweep_dir: Path) -> list[Sequence[Any]]:
        """``n_jobs`` workers, each asking the stored study for its next trial as its last one ends."""
        workers = loop_count(self.launcher, settings.n_jobs)
        note_workers(workers)
        log.info("search: %d trials, %d worker(s) asking for the next one as their last one ends", settings.n_trials,
                 workers)
        ran = run_workers(self.launcher, settings.n_jobs, StudySource(settings, distributions, fixed, str(sweep_dir)))
        return [[r for _, r in sorted(ran, key=lambda pair: pair[0]) if r is not None]]

    def _batches(self, study: Any, settings: SearchSettings, distributions: dict[str, Any], fixed: list[str],
                 sweep_dir: Path) -> list[Sequence[Any]]:
        """Batch-synchronous: ``n_jobs`` trials asked, launched together, all told before the next batch is asked."""
        note_workers(loop_count(self.launcher, settings.n_jobs))  # its workers_busy_fraction: what the waits cost
        returns = []
        while (done := finished(study)) < settings.n_trials:
            batch = [study.ask(distributions) for _ in range(min(settings.n_jobs, settings.n_trials - done))]
            overrides = [fixed + [as_override(k, v) for k, v in trial.params.items()] for trial in batch]
            log.info("search: trials %d-%d of %d", batch[0].number, batch[-1].number, settings.n_trials)
            note_taken(sweep_dir, [trial.number for trial in batch])  # the batch's members all start now
            # A launch that fails (a joblib worker killed) loses no trial: each is settled from its dir,
            # told FAIL if it failed.
            results = launch_members(self.launcher, overrides, batch[0].number, sweep_dir,
                                     job_composer(self.hydra_context, self.config))
            returns.append([r for r in results if r is not None])
            for trial, result in zip(batch, results):
                tell(study, settings, trial, self._output_dir(trial.number, result))
        return returns

    def _settings(self) -> dict[str, Any]:
        """``hydra.sweeper``'s settings, with the study named after the sweep when it has no name of its own."""
        assert self.config is not None
        settings = {k: self.settings[k] for k in SETTINGS_KEYS}
        if not settings["study_name"]:
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            settings["study_name"] = f"{self.config.mlflow.experiment_name}-{sweep_dir.parent.name}-{sweep_dir.name}"
        return settings

    def _announce(self, settings: SearchSettings) -> None:
        """Tell members (``mlflow_sweep.json``) and the parent run (tags) where the study is."""
        info = SESSION.open
        if info is None:  # no MLflow sweep callback (another primary config): nothing to record
            return
        info.search = settings.to_json()
        info.save()
        parent = MlflowTracker(info.tracking_uri, info.experiment_name, run_id=info.parent_run_id)
        parent.set_tags({"optuna.storage": settings.storage, "optuna.study_name": settings.study_name,
                         "optuna.objectives": ",".join(settings.objectives), "optuna.pruner": str(settings.pruner)})

    def _output_dir(self, number: int, result: Any) -> Path:
        """Where trial ``number``'s member wrote its files (Hydra's job dir; the sweep dir's ``<number>/`` if
        unknown)."""
        try:
            return Path(result.hydra_cfg.hydra.runtime.output_dir)
        except AttributeError:
            assert self.config is not None
            return Path(str(self.config.hydra.sweep.dir)) / str(number)


def check_search(sweep: tuple[DictConfig, list[str]] | None) -> None:
    """Refuse a guided search's bad settings or search space in one line, before anything is created.

    ``sweep`` is :func:`mnist_np.experiment.config.compose.compose_sweep`'s: the
    sweep's config with ``hydra.*``, and its command-line overrides (None: not a sweep).
    """
    if sweep is None:
        return
    config, overrides = sweep
    if config.hydra.sweeper.get("_target_") != SEARCH_SWEEPER:
        return
    sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
    assert isinstance(sweeper, dict)
    settings_from({**sweeper, "study_name": sweeper["study_name"] or "(named after the sweep)"},
                  max_epochs=int(config.trainer.epochs))
    search_space(sweeper.get("params"), [o for o in overrides if not o.startswith("hydra.")])


def write_results(study: Any, settings: SearchSettings, path: Path) -> None:
    """``optimization_results.yaml`` as Hydra's Optuna sweeper writes it: the best trial, or the Pareto front's."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        # Every trial failed or was pruned.
        results: dict[str, Any] = {"name": "optuna", "best_params": None, "best_value": None}
    elif len(settings.objectives) == 1:
        results = {"name": "optuna", "best_params": study.best_params, "best_value": study.best_value,
                   "best_trial": study.best_trial.number}
    else:
        results = {"name": "optuna", "solutions": [{"params": t.params, "values": t.values, "trial": t.number}
                                                   for t in study.best_trials]}
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(results)))
