"""Seed groups: members that differ only in ``seed``, aggregated (n, mean ± standard deviation), best group first.

One seed says little about a config: two learning rates 0.1 points apart
on one seed each may swap places on the next. A sweep over configs and
seeds (``seed=0,1,2 optimizer.lr=0.03,0.1``) is read per config instead:
the groups are ranked on their mean best validation accuracy (the test
accuracy is shown, never used to rank).
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

SEED_KEY = "seed"
# What each group aggregates, from the sweep table's rows (mnist_np.experiment.sweep.summary.summarize).
AGGREGATED = ("val_accuracy", "test_accuracy")


def by_config(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per group of ``rows`` equal in every key of ``keys`` but ``seed``, best mean val accuracy first.

    Args:
        rows: the sweep table's rows: ``status``, the keys, ``val_accuracy``, ``test_accuracy``, ``train_seconds``.
        keys: the keys that tell configs apart (the swept or varying ones; ``seed`` among them is ignored).

    Returns:
        rows of ``<keys but seed>, n, failed, seeds, val_accuracy_mean, val_accuracy_std,
        test_accuracy_mean, test_accuracy_std, train_seconds_mean``; ``n`` counts the
        finished members the means are over, a standard deviation needs two of them (else None).
    """
    config_keys = [k for k in keys if k != SEED_KEY]
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(str(row.get(k, "")) for k in config_keys), []).append(row)
    out = []
    for config, members in groups.items():
        done = [m for m in members if m["status"] == "FINISHED" and finite_number(m.get("val_accuracy"))]
        row: dict[str, Any] = dict(zip(config_keys, config))
        row.update(n=len(done), failed=len(members) - len(done),
                   seeds=",".join(sorted((str(m.get(SEED_KEY, "")) for m in members), key=_seed_order)))
        for key in AGGREGATED:
            values = [float(m[key]) for m in done if finite_number(m.get(key))]
            row[f"{key}_mean"] = statistics.fmean(values) if values else None
            row[f"{key}_std"] = statistics.stdev(values) if len(values) >= 2 else None
        seconds = [float(m["train_seconds"]) for m in done if finite_number(m.get("train_seconds"))]
        row["train_seconds_mean"] = statistics.fmean(seconds) if seconds else None
        out.append(row)
    out.sort(key=lambda r: (r["val_accuracy_mean"] is None, -(r["val_accuracy_mean"] or 0.0)))
    return out


def shown(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The groups for reading (Markdown, a terminal): ``mean ± std`` in one column per figure."""
    out = []
    for r in rows:
        row = {k: v for k, v in r.items() if not k.endswith(("_mean", "_std"))}
        for key in AGGREGATED:
            row[key] = _mean_std(r[f"{key}_mean"], r[f"{key}_std"])
        row["train_seconds"] = "" if r["train_seconds_mean"] is None else f"{r['train_seconds_mean']:.1f}"
        out.append(row)
    return out


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _seed_order(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.lstrip("-").isdigit() else (0, seed)


def finite_number(x: Any) -> bool:
    """A metric value that can be ranked and averaged (not None, NaN or inf)."""
    return isinstance(x, (int, float)) and math.isfinite(x)
