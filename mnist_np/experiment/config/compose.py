"""Configs composed as ``scripts/train.py`` composes them, the command line checked first, and saved configs read back.

:func:`check_overrides` is what a command line goes through before Hydra
sees it: the per-key checks of :mod:`mnist_np.experiment.config.overrides`, then one
composition to catch what only the whole config shows (a key that the
chosen option's schema lacks). :func:`compose` is the same for tests,
notebooks and tools; :func:`load_run_config` reads a run's saved config.
"""

from __future__ import annotations

import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mnist_np.common.paths import CONF_DIR
from mnist_np.experiment.config.overrides import (
    check_values,
    command_line_overrides,
    missing_value,
    parse_override,
    parse_overrides,
)
from mnist_np.experiment.config.schema import (
    GROUP_SCHEMAS,
    Config,
    ConfigError,
    DataConfig,
    MlflowConfig,
    ModelConfig,
    ScheduleConfig,
    TrainerConfig,
    is_group,
    option_schema,
    register_configs,
)
from mnist_np.experiment.config.validation import validate

MAX_COMPOSITIONS = 16  # a sweep's command lines composed up front (each takes ~0.1 s)


def check_overrides(args: list[str], composition: bool = True) -> None:
    """Reject bad command-line overrides with one line, before Hydra composes.

    Covers unknown group options, unknown keys and values of the wrong
    type, including every value of a choice/range sweep; then, with
    ``composition``, composes the config to catch what only the whole
    config shows (see :func:`composition_error`). ``hydra.*`` overrides and
    flags are left to Hydra.
    """
    overrides = command_line_overrides(args)
    if overrides is None:
        return
    parsed = parse_overrides(overrides)
    check_values(parsed)
    # Without overrides of ours the config is the default one, which the tests compose:
    # nothing to learn from composing it again (a third of a second at every start).
    ours = [o for o in parsed if not o.key_or_group.startswith("hydra")]
    error = composition_error(parsed) if composition and ours else None
    if error is not None:
        raise ConfigError(error)


def composition_error(parsed: list[Any]) -> str | None:
    """Compose the config as Hydra will, and say in one line what stops it (None: nothing does).

    A sweep is composed at its first values, then with each other option of
    a swept group once. Other values of a swept key change no key of the
    config (each has been type-checked), so they are not composed: that is a
    third of a second per value at every sweep's start.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    for lines in sweep_variants(parsed)[:MAX_COMPOSITIONS]:
        try:
            _compose(lines)
        except (HydraException, OmegaConfBaseException) as e:
            cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
            key = str(getattr(cause, "full_key", "") or "")
            group = key.split(".", 1)[0]
            if isinstance(cause, MissingMandatoryValue):
                return missing_value(key)
            if "." in key and group in GROUP_SCHEMAS:
                rest = [line for line in lines if parse_override(line)[0] != key]
                try:
                    chosen = _compose(rest)[group]
                    return (f"{key} is not a key of {group}={chosen.get('name', '?')}; "
                            f"its keys: {', '.join(sorted(chosen))}")
                except (HydraException, OmegaConfBaseException):
                    pass
            first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            return f"cannot compose the config: {first_line}"
    return None


def sweep_variants(parsed: list[Any]) -> list[list[str]]:
    """The command lines worth composing: first values of every sweep, then each other option of a swept group."""
    from hydra.errors import HydraException

    fixed, swept = [], []
    for o in parsed:
        key = o.get_key_element()
        if o.key_or_group.startswith("hydra"):
            continue  # Hydra's own business
        if not o.is_sweep_override():
            fixed.append(o.input_line)
            continue
        try:
            values = [f"{key}={v}" for v in o.sweep_string_iterator()]
        except HydraException:
            continue  # interval()/tag() search spaces: the sweeper draws them
        swept.append(values if is_group(o.key_or_group) else values[:1])
    first = [values[0] for values in swept]
    variants = [fixed + first]
    for i, values in enumerate(swept):
        variants += [fixed + first[:i] + [v] + first[i + 1 :] for v in values[1:]]
    return variants


def compose(overrides: typing.Sequence[str] = ()) -> DictConfig:
    """The config ``scripts/train.py`` would run with these overrides (no Hydra run dir, no logging set-up).

    For tests, notebooks and tools that re-create a run's config.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    check_overrides(list(overrides), composition=False)  # composing is the next step anyway
    try:
        return _compose(overrides)
    except (HydraException, OmegaConfBaseException):
        error = composition_error(parse_overrides(list(overrides)))
        raise ConfigError(error or "cannot compose the config") from None


def _compose(overrides: typing.Sequence[str], with_hydra: bool = False) -> DictConfig:
    """Hydra's composition of ``conf/config.yaml`` with ``overrides`` (no checks of ours); ``with_hydra``: and
    ``hydra.*``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=with_hydra)


def compose_sweep(args: list[str]) -> tuple[DictConfig, list[str]] | None:
    """For a ``--multirun`` command line: its config with ``hydra.*`` (the sweeper's and launcher's settings,
    composed without the swept values) and its overrides; None for any other command line."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = command_line_overrides(args)
    if overrides is None or not ({"-m", "--multirun"} & set(args)):
        return None
    fixed = [o.input_line for o in parse_overrides(overrides) if not o.is_sweep_override()]
    try:
        return _compose(fixed, with_hydra=True), overrides
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"cannot compose the sweep: {str(e).strip().splitlines()[0]}") from None


def load_run_config(text: str, source: str = "config") -> DictConfig:
    """A config read back from a run (untrusted data): checked against the schema, then validated.

    Unknown keys and wrong types are refused (the schema is strict), a key
    the schema requires and the text lacks is refused, and nothing in it is
    ever imported or executed: components are names looked up in the registries.
    """
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    try:
        raw = OmegaConf.create(text)
        if not isinstance(raw, DictConfig):
            raise ConfigError(f"{source}: not a mapping")
        chosen = lambda group, default: option_schema(group, raw.get(group, {}).get("name", default))()  # noqa: E731
        # A run saved before the augment group existed trained on its images as they are: augment=none.
        schema = OmegaConf.structured(
            Config(
                data=DataConfig(), model=ModelConfig(), optimizer=chosen("optimizer", "sgd"), schedule=ScheduleConfig(),
                trainer=TrainerConfig(), mlflow=MlflowConfig(), augment=chosen("augment", "none"),
            )
        )
        cfg = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{source}: {key + ': ' if key else ''}{str(e).splitlines()[0]}") from None
    except yaml.YAMLError as e:  # e.g. a !!python/object tag: OmegaConf's loader is a safe one and refuses it
        raise ConfigError(f"{source}: not plain YAML data ({str(e).splitlines()[0]})") from None
    assert isinstance(cfg, DictConfig)
    validate(cfg)
    return cfg
