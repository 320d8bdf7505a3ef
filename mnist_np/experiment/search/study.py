"""A guided search's Optuna study: its settings, storage, sampler and pruner, all picked by name.

The study lives in storage, never only in memory: a SQLite file beside the
project's MLflow store by default (``optuna.db``), any Optuna RDB URL
(``postgresql://...``), or a journal file on a shared filesystem (a path
ending in ``.log``) for clusters. So a killed search resumes, members in
other processes and on other nodes report to their trials, and
``optuna-dashboard <storage>`` opens it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

from mnist_np.common.paths import PROJECT_ROOT
from mnist_np.experiment.config.schema import ConfigError
from mnist_np.experiment.sweep.info import OBJECTIVES

DIRECTIONS = ("maximize", "minimize")
# The per-epoch metric a member reports to its trial, by objective (pruning needs one).
REPORTED = {"val_accuracy": "val_accuracy", "val_loss": "val_loss"}


def _optuna() -> Any:
    import optuna  # imported when a search needs it: a run that is not a trial never does

    return optuna


# Registries: a name in the config -> the component.
SAMPLERS: dict[str, Callable[[int | None], Any]] = {
    "tpe": lambda seed: _optuna().samplers.TPESampler(seed=seed),
    "random": lambda seed: _optuna().samplers.RandomSampler(seed=seed),
    "nsgaii": lambda seed: _optuna().samplers.NSGAIISampler(seed=seed),
}
# name -> (min_epochs, max_epochs, reduction_factor) -> pruner
PRUNERS: dict[str, Callable[[int, int, int], Any]] = {
    "median": lambda low, high, factor: _optuna().pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=low),
    "hyperband": lambda low, high, factor: _optuna().pruners.HyperbandPruner(low, high, factor),
    "successive_halving": lambda low, high, factor: _optuna().pruners.SuccessiveHalvingPruner(low, factor),
}


@dataclass
class SearchSettings:
    """What a search is: everything under ``hydra.sweeper`` except its search space.

    No defaults here: they are the sweeper's schema's
    (:class:`mnist_np.experiment.config.schema.SearchSweeperConfig`). ``max_epochs``
    is the members' ``trainer.epochs`` (the pruners' full budget).
    """

    n_trials: int
    n_jobs: int
    objectives: list[str]
    directions: list[str]
    study_name: str
    storage: str
    sampler: str
    seed: int | None
    pruner: str | None
    min_epochs: int
    reduction_factor: int
    max_epochs: int
    asynchronous: bool = True  # a default only for sweeps recorded before the key existed

    @property
    def reported(self) -> str | None:
        """The per-epoch metric members report to their trials (None: nothing to prune on)."""
        return REPORTED.get(self.objectives[0]) if len(self.objectives) == 1 else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def default_storage() -> str:
    """``sqlite:///<project root>/optuna.db``: beside the project's MLflow store."""
    return f"sqlite:///{(PROJECT_ROOT / 'optuna.db').resolve()}"


def settings_from(sweeper: Mapping[str, Any], max_epochs: int) -> SearchSettings:
    """The settings ``hydra.sweeper`` holds (every key of the sweeper's schema), checked; one line naming the key for
    anything wrong."""
    objectives, directions = _as_list(sweeper["objectives"]), _as_list(sweeper["direction"])
    if len(directions) == 1 and len(objectives) > 1:
        raise ConfigError(f"hydra.sweeper.direction={directions[0]} is not allowed with {len(objectives)} objectives; "
                          f"expected one direction per objective, e.g. [maximize,minimize]")
    settings = SearchSettings(
        n_trials=sweeper["n_trials"], n_jobs=sweeper["n_jobs"], objectives=objectives, directions=directions,
        study_name=str(sweeper["study_name"]), storage=str(sweeper["storage"] or default_storage()),
        sampler=str(sweeper["sampler"]), seed=sweeper["seed"], pruner=sweeper["pruner"],
        min_epochs=sweeper["min_epochs"], reduction_factor=sweeper["reduction_factor"], max_epochs=max_epochs,
        asynchronous=bool(sweeper["asynchronous"]),
    )
    check(settings)
    return settings


def _as_list(value: Any) -> list[str]:
    """``x`` or ``[x, y]`` (a YAML list arrives as OmegaConf's ListConfig) as a list of strings."""
    return [value] if isinstance(value, str) else [str(v) for v in value]


def check(s: SearchSettings) -> None:
    """Refuse, in one line naming the key and what is allowed, settings the search cannot run with."""
    def bad(key: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError(f"hydra.sweeper.{key}={value} is not allowed; expected {allowed}")

    for key, value in (("n_trials", s.n_trials), ("n_jobs", s.n_jobs), ("min_epochs", s.min_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(key, value, "an integer >= 1")
    if isinstance(s.reduction_factor, bool) or not isinstance(s.reduction_factor, int) or s.reduction_factor < 2:
        raise bad("reduction_factor", s.reduction_factor, "an integer >= 2")
    if unknown := [o for o in s.objectives if o not in OBJECTIVES]:
        why = " (members are chosen on validation, never on test)" if any(o.startswith("test") for o in unknown) else ""
        raise bad("objectives", s.objectives, f"a list of {', '.join(OBJECTIVES)}{why}")
    if len(set(s.objectives)) != len(s.objectives):
        raise bad("objectives", s.objectives, "each objective once")
    if len(s.directions) != len(s.objectives) or any(d not in DIRECTIONS for d in s.directions):
        raise bad("direction", s.directions, f"{' or '.join(DIRECTIONS)}, one per objective")
    if s.sampler not in SAMPLERS:
        raise bad("sampler", s.sampler, f"one of {', '.join(SAMPLERS)}")
    if s.seed is not None and (isinstance(s.seed, bool) or not isinstance(s.seed, int)):
        raise bad("seed", s.seed, "an integer or null")
    if s.pruner is not None:
        if s.pruner not in PRUNERS:
            raise bad("pruner", s.pruner, f"null or one of {', '.join(PRUNERS)}")
        if s.reported is None:
            raise bad("pruner", s.pruner,
                      "null with these objectives: pruning needs one objective, val_accuracy or val_loss")
    if not (s.storage.endswith(".log") or "://" in s.storage):
        raise bad("storage", s.storage, "null (optuna.db at the project root), an Optuna database URL (sqlite:///..., "
                                        "postgresql://...) or a journal file path ending in .log")


def open_storage(url: str) -> Any:
    """An Optuna storage for ``url``: a journal file (path ending ``.log``) or a database URL."""
    import optuna

    if url.endswith(".log") and "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url))
    return optuna.storages.RDBStorage(
        url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None)


def pruner(s: SearchSettings) -> Any:
    """The study's pruner (Optuna's NopPruner when there is none)."""
    import optuna

    if s.pruner is None:
        return optuna.pruners.NopPruner()
    return PRUNERS[s.pruner](s.min_epochs, max(s.max_epochs, s.min_epochs), s.reduction_factor)


def load_study(s: SearchSettings, create: bool = False) -> Any:
    """The study in its storage (created on first use when ``create``), with its sampler and pruner."""
    import optuna

    storage = open_storage(s.storage)
    sampler = SAMPLERS[s.sampler](s.seed)
    if create:
        return optuna.create_study(storage=storage, study_name=s.study_name, sampler=sampler, pruner=pruner(s),
                                   directions=s.directions, load_if_exists=True)
    return optuna.load_study(study_name=s.study_name, storage=storage, sampler=sampler, pruner=pruner(s))
