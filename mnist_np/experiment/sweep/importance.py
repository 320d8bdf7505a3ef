"""Which swept parameters mattered: Optuna's PED-ANOVA importance over a sweep's finished members.

Every sweep, grid or search, is read the same way: its finished members
become the trials of an in-memory Optuna study (one objective, the
member's best validation accuracy, maximised; the test set never
decides), and :func:`optuna.importance.get_param_importances` ranks the
swept keys that took two values or more among them. Computed only where
at least two such keys vary: with one, there is nothing to rank.

The evaluator is :class:`optuna.importance.PedAnovaImportanceEvaluator`,
Optuna 5's default: it needs NumPy only, where fANOVA
(``FanovaImportanceEvaluator``) fits a random forest with scikit-learn, and
a forest fitted to a 6-member grid says little anyway. ``optuna.importance``
still imports scikit-learn for fANOVA when it is installed (MLflow installs
it), which takes longer than the whole PED-ANOVA computation; it is
imported here with scikit-learn hidden (:func:`_without_sklearn`).

PED-ANOVA compares the values the best members took (the top quantile)
with the values every finished member took; a parameter whose top values
look like all its values did not matter.
Optuna's default top quantile is 10 %, which is one member of a small
grid, and then every parameter looks equally important (the estimate
reflects only how many values each has); so the top is 10 % but at least
:data:`TOP_MEMBERS` members (Optuna's own advice), and at most half.

What a trial's values are, from the values the members took (the sweep's
params are strings in MLflow):

- a key whose values are not all numbers (an option such as ``optimizer``,
  booleans), that took at most :data:`MAX_CATEGORIES` values, or that is
  ``seed`` is categorical: each value its own category. A grid's few
  values have nothing between them for a density over a line to smooth
  toward, and neighbouring seeds have nothing in common;
- a key with more numeric values is numeric (integers if all are): the
  estimate then pools neighbouring values, so "lr near 0.1 does well"
  shows even where each value was tried once or twice. A search's
  ``interval(...)`` or ``range(...)`` keeps its own scale (log only with
  ``tag(log, ...)``); a list of values is on a log scale when all are
  positive and span at least a factor of :data:`LOG_SPAN`.

Pruned members of a search count, with the validation accuracy they had
when stopped: they are what the sampler tried, and leaving them out would
compare the best with the survivors only. Failed members have no value
and do not count.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from typing import Any, Iterator, Mapping, Sequence

from mnist_np.experiment.sweep.seed_groups import SEED_KEY, finite_number

TOP_MEMBERS = 5  # PED-ANOVA "preferably at least 5 trials above the target quantile" (Optuna's docstring)
MAX_CATEGORIES = 3
LOG_SPAN = 10.0
EVALUATOR = "PED-ANOVA"
IMPORTANCE_TAG = "most_important_param"  # the parent run's tag: the first row of importance.csv
IMPORTANCE_FILE = "importance.csv"  # among the parent's sweep_summary/ artifacts


def param_importance(rows: Sequence[Mapping[str, Any]], swept: Mapping[str, str]) -> list[dict[str, Any]] | None:
    """``[{"param", "importance"}, ...]``, most important first (ties by name), summing to 1; None when fewer than two
    keys vary.

    Args:
        rows: the sweep table's rows (:func:`mnist_np.experiment.sweep.summary.summarize`): ``status``,
            ``val_accuracy`` and a value per swept key.
        swept: the swept keys and their specs (``{"optimizer.lr": "0.01,0.1"}``, ``"tag(log, interval(...))"``).
    """
    done = [r for r in rows if r["status"] == "FINISHED" and finite_number(r.get("val_accuracy"))]
    varying = [k for k in swept if len({str(r.get(k, "")) for r in done}) > 1]
    if len(varying) < 2:
        return None
    import optuna
    from optuna.trial import create_trial

    with _without_sklearn():
        from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    distributions = {k: distribution([r.get(k, "") for r in done], swept[k], categorical=k == SEED_KEY)
                     for k in varying}
    with _quiet(optuna):
        study = optuna.create_study(direction="maximize")  # in memory: nothing is stored
        study.add_trials([create_trial(params={k: as_value(r.get(k, ""), distributions[k]) for k in varying},
                                       distributions=distributions, value=float(r["val_accuracy"])) for r in done])
        evaluator = PedAnovaImportanceEvaluator(target_quantile=top_quantile(len(done)))
        scores = get_param_importances(study, evaluator=evaluator, params=varying)
    ranked = sorted(varying, key=lambda k: (-scores[k], k))
    return [{"param": k, "importance": round(float(scores[k]), 6)} for k in ranked]


def top_quantile(members: int) -> float:
    """The share of members PED-ANOVA calls the best: 10 %, but at least :data:`TOP_MEMBERS` of them and at most
    half."""
    return min(0.5, max(0.1, TOP_MEMBERS / max(members, 1)))


def distribution(values: Sequence[Any], spec: str, categorical: bool = False) -> Any:
    """The Optuna distribution of one swept key, from the values its finished members took (see the module's
    docstring)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    numbers = [_number(v) for v in values]
    distinct = sorted(set(numbers)) if None not in numbers else []
    if len(distinct) <= MAX_CATEGORIES or categorical:
        return CategoricalDistribution(distinct or sorted({str(v) for v in values}))
    low, high = distinct[0], distinct[-1]
    spaced = "interval(" in spec or "range(" in spec  # a search's own scale
    log = "log" in spec if spaced else (low > 0 and high / low >= LOG_SPAN)
    if all(isinstance(v, int) for v in distinct) and (low >= 1 or not log):
        return IntDistribution(int(low), int(high), log=log)
    return FloatDistribution(float(low), float(high), log=log)


def as_value(value: Any, dist: Any) -> Any:
    """A member's value of a key as a trial of ``dist`` holds it."""
    from optuna.distributions import CategoricalDistribution

    number = _number(value)
    if isinstance(dist, CategoricalDistribution):
        return number if number is not None and number in dist.choices else str(value)
    return number


def _number(value: Any) -> int | float | None:
    """``"128"`` -> 128, ``"0.1"`` -> 0.1; None for anything else (``"adam"``, ``"true"``, NaN)."""
    if isinstance(value, bool):
        return None
    for kind in (int, float):
        try:
            number = kind(value)
        except (TypeError, ValueError):
            continue
        return number if math.isfinite(number) else None
    return None


@contextlib.contextmanager
def _without_sklearn() -> Iterator[None]:
    """scikit-learn unimportable for the duration: ``optuna.importance`` then imports without it.

    Optuna imports scikit-learn for fANOVA and mean decrease impurity inside its ``try_import``, which keeps the
    ImportError until one of those evaluators is used; PED-ANOVA never uses it. In this process fANOVA then reports
    scikit-learn missing, which nothing here asks for; ``import sklearn`` itself works again afterwards.
    """
    if "sklearn" in sys.modules or "optuna.importance" in sys.modules:  # imported already: nothing to spare
        yield
        return
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # Python's marker for "this import fails"
    try:
        yield
    finally:
        if "sklearn" in sys.modules and sys.modules["sklearn"] is None:
            del sys.modules["sklearn"]


@contextlib.contextmanager
def _quiet(optuna: Any) -> Iterator[None]:
    """No Optuna log lines ("A new study created in memory") or warnings (few trials) on a sweep's console."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(level)
