"""The command line, read with Hydra's own parsers and checked key by key before anything is composed.

Unknown group options (``optimizer=nope``), unknown keys (``trainer.epoch=3``)
and values that do not fit the key's type (``trainer.epochs=abc``) --
including every value of a choice/range sweep -- are refused with one line
each (Hydra's own messages run to several lines). What only the whole
config shows is :mod:`mnist_np.experiment.config.compose`'s business.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from omegaconf import MISSING, OmegaConf

from mnist_np.experiment.config.schema import GROUP_SCHEMAS, PRESET_GROUPS, Config, ConfigError, group_options


def parse_override(line: str) -> tuple[str, str]:
    """``"+optimizer.lr=0.1"`` -> ``("optimizer.lr", "0.1")``: the key without Hydra's ``+``/``++``/``~`` prefix, and
    the value."""
    key, _, value = line.partition("=")
    return key.lstrip("+~"), value


def command_line_overrides(args: list[str]) -> list[str] | None:
    """The overrides among ``args`` (Hydra's flags such as ``-m`` or ``--config-dir X`` left out).

    None when the words are not overrides of our config: shell completion
    (``-sc install=bash``), or another primary config (e.g. a run's saved
    ``.hydra/config.yaml``), which Hydra checks itself.
    """
    # Hydra has no public API for its command-line parser; hydra.main itself
    # uses this one (hydra._internal.utils), so flags are read exactly as Hydra reads them.
    from hydra._internal.utils import get_args_parser

    known, _ = get_args_parser().parse_known_args(args)
    if known.shell_completion:
        return None
    if known.config_name not in (None, "config") or known.config_dir or known.config_path:
        return None
    return list(known.overrides)


def parse_overrides(overrides: list[str]) -> list[Any]:
    """Hydra's parse of ``overrides`` (``Override`` objects); a syntax error is one line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"cannot parse the command line: {str(e).splitlines()[0]}") from None


def check_values(parsed: list[Any]) -> None:
    """Every group option and every value (each one of a sweep) against the schemas; ``hydra.*`` is Hydra's."""
    from hydra.errors import HydraException

    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra") or o.is_delete():
            continue
        if o.is_sweep_override():
            try:
                values = list(o.sweep_iterator())
            except HydraException:
                continue  # interval()/tag() search spaces: the sweeper's business
        else:
            values = [o.value()]
        group = key.split(".", 1)[0].lstrip("+")
        if "." not in key and (group in GROUP_SCHEMAS or group in PRESET_GROUPS):
            options = group_options(group)
            # `+sweep=[optuna,parallel]` selects several options of one group at once.
            for v in [item for v in values for item in (v if isinstance(v, list) else [v])]:
                if str(v) not in options:
                    raise ConfigError(f"{group}={v!r} is not a known option; allowed: {', '.join(options)}")
            continue
        for v in values:
            check_value(key, v)


def check_value(key: str, value: Any) -> None:
    """Refuse, in one line, a ``key`` no schema has or a ``value`` its type does not take."""
    parts = key.split(".")
    if len(parts) == 1:
        schemas: tuple[type, ...] = (Config,)
        name = parts[0]
    elif len(parts) == 2 and parts[0] in GROUP_SCHEMAS:
        schemas = GROUP_SCHEMAS[parts[0]]
        name = parts[1]
    else:
        return  # deeper keys are not ours to judge
    candidates = [s for s in schemas if name in {f.name for f in dataclasses.fields(s)}]
    if not candidates or (len(parts) == 1 and name in GROUP_SCHEMAS):
        known = sorted({f.name for s in schemas for f in dataclasses.fields(s)} - set(GROUP_SCHEMAS))
        where = f"keys of {parts[0]}" if len(parts) == 2 else "top-level keys"
        raise ConfigError(f"{key} is not a config key; {where}: {', '.join(known)}")
    hint = typing.get_type_hints(candidates[0])[name]
    if value == MISSING:
        raise ConfigError(f"{key}=??? leaves a required value unset; expected {describe_type(hint)}")
    # OmegaConf would take 3 or "yes" for a boolean; a typo should not silently mean true.
    strict_bool = hint is bool or (typing.get_origin(hint) is typing.Union and bool in typing.get_args(hint))
    if strict_bool and not isinstance(value, bool) and value is not None:
        raise ConfigError(f"{key}={value!r} has the wrong type; expected {describe_type(hint)}")
    for schema in candidates:
        node = OmegaConf.structured(schema)
        try:
            setattr(node, name, value)
            return
        except Exception:  # omegaconf.ValidationError and friends
            pass
    raise ConfigError(f"{key}={value!r} has the wrong type; expected {describe_type(hint)}")


def describe_type(hint: Any) -> str:
    """A type hint as a user reads it: ``an integer or null``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        inner = [a for a in args if a is not type(None)][0]
        return f"{describe_type(inner)} or null"
    if origin is list:
        return f"a list of {describe_type(args[0])}s" if args else "a list"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def missing_value(key: str) -> str:
    """One line for a value left at ``???`` (or a group removed with ``~group``)."""
    if key in GROUP_SCHEMAS:
        return f"{key} is missing; expected one of {', '.join(group_options(key))} ({key}=<option>)"
    group, _, name = key.partition(".")
    hints = [typing.get_type_hints(schema)[name] for schema in GROUP_SCHEMAS.get(group, (Config,))
             if name in {f.name for f in dataclasses.fields(schema)}]
    return f"{key}=??? leaves a required value unset; expected {describe_type(hints[0]) if hints else 'a value'}"
