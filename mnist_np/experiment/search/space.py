"""A guided search's space, written as Hydra overrides, turned into Optuna distributions.

The syntax users of Hydra's Optuna sweeper know, in ``hydra.sweeper.params``
or on the command line (which wins):

- ``choice(64, 128, 256)`` or ``64,128,256``: one of the values;
- ``range(0, 10)`` (``range(0, 10, 2)``): an integer from the range, stop excluded;
- ``interval(0.001, 0.5)``: a number in the interval; ``tag(int, interval(16, 512))``: an integer;
- ``tag(log, ...)``: sampled on a log scale (interval and range).

Any other override is passed to every trial as it is.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from mnist_np.experiment.config.schema import ConfigError

ALLOWED = ("choice(a, b, ...), a,b,..., range(start, stop[, step]), interval(low, high), "
           "each optionally in tag(log, ...) or tag(int, ...)")


def search_space(params: Mapping[str, Any] | None, arguments: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """``(distributions, fixed)``: Optuna distributions by key, and the overrides every trial gets.

    ``params`` is ``hydra.sweeper.params`` (key -> spec); ``arguments`` the
    command line's overrides, whose sweeps join (and replace) the params.

    Raises:
        ConfigError: a spec that is not a search space, or an empty space, in one line.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    lines = [f"{key}={str(spec).strip()}" for key, spec in (params or {}).items()] + list(arguments)
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except HydraException as e:
        raise ConfigError(f"cannot parse the search space: {str(e).splitlines()[0]}; expected {ALLOWED}") from None
    distributions: dict[str, Any] = {}
    fixed: list[str] = []
    for o in parsed:
        if o.is_sweep_override():
            distributions[o.get_key_element()] = distribution(o.get_key_element(), o.value())
        else:
            distributions.pop(o.get_key_element(), None)  # the command line fixes what params would search
            fixed.append(o.input_line)
    if not distributions:
        raise ConfigError("the search has nothing to search: set hydra.sweeper.params or sweep a key on the "
                          f"command line ({ALLOWED})")
    return distributions, fixed


def distribution(key: str, sweep: Any) -> Any:
    """One Hydra sweep (``ChoiceSweep``, ``RangeSweep``, ``IntervalSweep``) as an Optuna distribution."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    tags = set(getattr(sweep, "tags", ()) or ())
    log = "log" in tags
    if isinstance(sweep, ChoiceSweep):
        if log:
            raise ConfigError(f"{key}: tag(log, ...) needs a range or an interval, not a choice; expected {ALLOWED}")
        return CategoricalDistribution([_plain(v) for v in sweep.list])
    if isinstance(sweep, RangeSweep):
        if not all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)) or sweep.stop <= sweep.start:
            raise ConfigError(f"{key}: range({sweep.start}, {sweep.stop}, {sweep.step}) must count up in "
                              f"integers; expected {ALLOWED}")
        last = range(int(sweep.start), int(sweep.stop), int(sweep.step))[-1]
        return IntDistribution(int(sweep.start), last, log=log, step=1 if log else int(sweep.step))
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if not low < high or (log and low <= 0):
            raise ConfigError(f"{key}: interval({low}, {high}) must have low < high (and low > 0 with tag(log, ...))")
        if "int" in tags:
            return IntDistribution(int(low), int(high), log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise ConfigError(f"{key}: {sweep} is not a search space; expected {ALLOWED}")


def _plain(value: Any) -> Any:
    """A choice as Optuna stores it: None, bool, int, float or str (lists and dicts as their override text)."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def as_override(key: str, value: Any) -> str:
    """A sampled value back as an override Hydra reads the same way (``null``, ``true``, quoted strings)."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, str) and not value.replace("_", "").replace("-", "").replace(".", "").isalnum():
        return f"{key}='{value}'"
    return f"{key}={value}"
