"""A dry run (``dry_run=true``): what a command of ``scripts/train.py`` would launch, every member checked, nothing
created.

    python scripts/train.py --multirun model.hidden_size=64,128 optimizer.lr=0.01,0.1,0.3 dry_run=true

prints one line per member of a grid (its job number, its swept overrides
and the name its MLflow run would get), or, for a guided search
(``+sweep=optuna``), the search space and ``n_trials``; then a count line
(``6 members``, ``20 trials``). Every member's config is composed and
validated as its run would do it, and an invalid one gets the one-line
error its run would end with (its FAILED child would carry it); the exit
status is then 2, else 0. A search's members are drawn as it runs, so
the configs checked are the space's corners: each value of a choice and
both ends of each range and interval, one key at a time.

Nothing is created: no output or sweep dir, no lock, no MLflow run or
store, no Optuna study. Hydra makes its output dirs as soon as its main
runs, so the dry run is answered by ``scripts/train.py`` before Hydra's
main, from the command line alone (:func:`dry_run_requested`). It lives
in the top experiment layer because it covers both a grid (the sweep's)
and a search.

A grid of many members is composed once per combination of its swept
groups and presets (``optimizer=sgd,adam``); other swept values are set on
a copy with ``OmegaConf.update(..., merge=True)``, which is what Hydra
itself does with a ``key=value`` override, so checking 1,000 members
takes a second or so rather than a tenth of a second each.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Sequence, TextIO

from omegaconf import DictConfig, OmegaConf

from mnist_np.experiment.config.builders import default_run_name
from mnist_np.experiment.config.compose import check_overrides, compose, compose_sweep
from mnist_np.experiment.config.overrides import command_line_overrides, parse_override, parse_overrides
from mnist_np.experiment.config.schema import GROUP_SCHEMAS, SEARCH_SWEEPER, Config, ConfigError
from mnist_np.experiment.config.validation import validate
from mnist_np.experiment.search.space import as_override, search_space
from mnist_np.experiment.search.sweeper import check_search
from mnist_np.experiment.sweep.info import member_run_name, swept_parameters

KEY = "dry_run"
INVALID_NAME = "invalid-config"  # what a member with an invalid config is named (its FAILED child's record)


def dry_run_requested(args: Sequence[str]) -> bool:
    """Whether the command line sets ``dry_run=true`` (its last word on the key wins, as in Hydra).

    Raises:
        ConfigError: ``dry_run`` swept (``dry_run=true,false``): a dry run is the whole command's, never a member's.
    """
    overrides = command_line_overrides(list(args)) or []
    mine = parse_overrides([o for o in overrides if parse_override(o)[0] == KEY])
    if any(o.is_sweep_override() for o in mine):
        raise ConfigError(f"{KEY} is not allowed as a sweep; expected {KEY}=true or {KEY}=false for the whole command")
    return bool(mine) and mine[-1].value() is True


@dataclasses.dataclass
class Checked:
    """One member (or a search's corner) as the dry run shows it: a label (``#3``: job 3), its overrides, its run name,
    its error."""

    label: str
    shown: list[str]
    name: str
    error: str | None = None

    def line(self) -> str:
        return "  ".join(s for s in (f"  {self.label}", " ".join(self.shown) or "(no overrides)", self.name,
                                     f"invalid: {self.error}" if self.error else "") if s)


def dry_run(args: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Print what the command line would launch, check every member, create nothing; 0, or 2 when something is
    invalid."""
    try:
        checked, count = _plan([a for a in args if parse_override(a)[0] != KEY], out)  # members run without dry_run
    except ConfigError as e:  # the command line itself: refused as scripts/train.py would refuse it
        print(f"error: invalid config: {e}", file=err)
        return 2
    for c in checked:
        print(c.line(), file=out)
    invalid = [c for c in checked if c.error]
    print(count + (f", {len(invalid)} invalid" if invalid else ""), file=out)
    for error in dict.fromkeys(c.error for c in invalid):
        print(f"error: invalid config: {error}", file=err)
    return 2 if invalid else 0


def _plan(args: list[str], out: TextIO) -> tuple[list[Checked], str]:
    """The command line checked as ``scripts/train.py`` checks it, its header printed; its members checked, and the
    count line."""
    overrides = command_line_overrides(args) or []
    if any(parse_override(o)[0] == "resume" and parse_override(o)[1] not in ("", "null") for o in overrides):
        raise ConfigError(f"{KEY}=true is not allowed with resume=: a resumed run or sweep repeats its own saved "
                          "command; dry-run that command instead (its multirun.yaml, or the run's overrides)")
    check_overrides(args)
    sweep = compose_sweep(args)
    check_search(sweep)
    if sweep is None:
        print("dry run: one run; nothing is created", file=out)
        return [Composer().check("run", _task(overrides), {})], "1 run"
    if sweep[0].hydra.sweeper.get("_target_") == SEARCH_SWEEPER:
        return _search(sweep[0], sweep[1], Composer(), out)
    return _grid(sweep[0], sweep[1], Composer(), out)


def _grid(config: DictConfig, overrides: list[str], composer: Composer, out: TextIO) -> tuple[list[Checked], str]:
    """A grid sweep's members, numbered and ordered as Hydra's basic sweeper makes them
    (:mod:`mnist_np.experiment.sweep.grid`)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    task = _task(overrides)
    params = OmegaConf.to_container(config.hydra.sweeper.params) if config.hydra.sweeper.get("params") else {}
    assert isinstance(params, dict)
    lines = [f"{k}={v}" for k, v in params.items()] + task
    parser = OverridesParser.create(config_loader=_config_loader())
    try:
        jobs = [job for batch in BasicSweeper.split_arguments(parser.parse_overrides(lines), None) for job in batch]
    except HydraException as e:  # interval(...) in a grid: Hydra's sweep would stop there too
        raise ConfigError(f"the grid's members cannot be listed: {str(e).strip().splitlines()[0]}") from None
    swept = swept_parameters(task, params or None)
    fixed = [line for line in jobs[0] if parse_override(line)[0] not in swept]
    print(f"dry run: a grid sweep of {len(jobs)} members (launcher: "
          f"{_short(config.hydra.launcher)}); nothing is created", file=out)
    if fixed:
        print(f"every member: {' '.join(fixed)}", file=out)
    return [composer.check(f"#{number}", job, swept) for number, job in enumerate(jobs)], f"{len(jobs)} members"


def _search(config: DictConfig, overrides: list[str], composer: Composer, out: TextIO) -> tuple[list[Checked], str]:
    """A guided search's space and ``n_trials``, its corners checked (see the module's docstring)."""
    sweeper = config.hydra.sweeper
    params = OmegaConf.to_container(sweeper.params) if sweeper.get("params") else {}
    assert isinstance(params, dict)
    task = _task(overrides)
    distributions, fixed = search_space(params, task)
    swept = swept_parameters(task, params)
    print(f"dry run: a guided search of {sweeper.n_trials} trials (sampler {sweeper.sampler}, pruner "
          f"{sweeper.pruner or 'none'}, {sweeper.n_jobs} at a time; launcher: "
          f"{_short(config.hydra.launcher)}); nothing is created", file=out)
    if fixed:
        print(f"every trial: {' '.join(fixed)}", file=out)
    for key, dist in distributions.items():
        print(f"  {key}: {swept.get(key, '')}  ({describe(dist)})", file=out)
    corners = _corners(distributions)
    print(f"checked: {len(corners)} configs, each value of a choice and both ends of each range and interval", file=out)
    checked = [composer.check("check", fixed + [as_override(k, v) for k, v in corner.items()], swept)
               for corner in corners]
    return checked, f"{sweeper.n_trials} trials"


def _corners(distributions: dict[str, Any]) -> list[dict[str, Any]]:
    """Every key at its first value, then each other value of one key at a time (a choice's values, a range's ends)."""
    values = {k: list(d.choices) if hasattr(d, "choices") else [d.low, d.high] for k, d in distributions.items()}
    first = {k: v[0] for k, v in values.items()}
    return [first] + [{**first, k: v} for k, vs in values.items() for v in vs[1:]]


def describe(dist: Any) -> str:
    """An Optuna distribution in words: ``one of 64, 128, 256``, ``a number in [0.001, 0.5], log scale``."""
    if hasattr(dist, "choices"):
        return "one of " + ", ".join(map(str, dist.choices))
    kind = "an integer" if type(dist).__name__ == "IntDistribution" else "a number"
    step = f", step {dist.step}" if getattr(dist, "step", None) not in (None, 1) else ""
    return f"{kind} in [{dist.low}, {dist.high}]{step}{', log scale' if dist.log else ''}"


def _task(overrides: list[str]) -> list[str]:
    """The overrides a member gets (Hydra's own, ``hydra.*`` and ``hydra/...``, configure the sweep)."""
    return [o for o in overrides if not parse_override(o)[0].startswith("hydra")]


def _short(node: Any) -> str:
    """A launcher's name as a user picks it (``JoblibLauncher`` -> ``joblib``)."""
    return str(node.get("_target_", "")).rsplit(".", 1)[-1].removesuffix("Launcher").lower() or "basic"


def _config_loader() -> Any:
    """Hydra's config loader over ``conf/`` (a sweep's ``glob(...)`` of a group's options needs one)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    from mnist_np.common.paths import CONF_DIR

    return ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF_DIR)))


class Composer:
    """Members' configs, composed once per combination of groups and presets (see the module's docstring)."""

    VALUE_KEYS = frozenset(f.name for f in dataclasses.fields(Config)) - set(GROUP_SCHEMAS)

    def __init__(self, compose_fn: Callable[[list[str]], DictConfig] = compose) -> None:
        self._compose = compose_fn
        self._bases: dict[tuple[str, ...], DictConfig | ConfigError] = {}

    def config(self, job: list[str]) -> DictConfig:
        """The config a member with overrides ``job`` runs with (raises ConfigError as composing it would)."""
        parsed = parse_overrides(job)
        values = [o for o in parsed if self._is_value(o)]
        structure = tuple(o.input_line for o in parsed if not self._is_value(o))
        if structure not in self._bases:
            try:
                self._bases[structure] = self._compose(list(structure))
            except ConfigError as e:
                self._bases[structure] = e
        base = self._bases[structure]
        if isinstance(base, ConfigError):
            raise base
        cfg = copy.deepcopy(base)
        try:
            for o in values:
                OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
        except Exception:  # noqa: BLE001 -- Hydra's own composition says what is wrong, in our one line
            return self._compose(job)
        return cfg

    def _is_value(self, o: Any) -> bool:
        """A plain ``key=value`` of a config key (no group, preset, ``+``, ``~`` or package): set, not composed."""
        key = o.key_or_group
        if o.get_key_element() != key or o.is_delete() or o.is_add() or o.is_force_add():
            return False
        return key in self.VALUE_KEYS or ("." in key and key.split(".", 1)[0] in GROUP_SCHEMAS)

    def check(self, label: str, job: list[str], swept: dict[str, str]) -> Checked:
        """A member with overrides ``job``: its config validated, and the name its run would get."""
        shown = [line for line in job if parse_override(line)[0] in swept] if swept else list(job)
        try:
            cfg = self.config(job)
            validate(cfg)
        except ConfigError as e:
            return Checked(label, shown, member_run_name(INVALID_NAME, job, swept, explicit_base=True), str(e))
        base = cfg.mlflow.run_name or default_run_name(cfg)
        name = member_run_name(base, job, swept, explicit_base=bool(cfg.mlflow.run_name)) if swept else base
        return Checked(label, shown, name)
