"""Reproduce a run from what it saved, and say whether the result is the same, bit for bit.

A run is described by a :class:`RunRecord`: its final weights' hash, every
per-epoch metric that does not measure time, its test metrics, the versions
and thread count that decide floating-point results, and the config that
made it. :func:`compare` puts two records side by side.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mnist_np.experiment.run.tables import NOT_COMPARED
from mnist_np.nn.weights import load_weights
from mnist_np.tracking.queries import fetch_run

# Per-epoch metrics that must repeat exactly (timings never do).
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")
FINAL_METRICS = ("test_loss", "test_accuracy")
ENV_TAGS = ("numpy_version", "blas", "blas_threads", "train_shards", "python_version", "platform")


@dataclass
class RunRecord:
    """What a run produced, enough to tell whether another run produced the same."""

    source: str
    weights_sha256: str
    epochs: dict[int, dict[str, float]]
    final: dict[str, float]
    env: dict[str, str] = field(default_factory=dict)
    config_yaml: str = ""
    weights_config_yaml: str = ""  # the config embedded in weights/final.npz: what really made them


def record_from_dir(output_dir: Path) -> RunRecord:
    """Read a run's record from its output dir (``summary.json``, ``metrics.jsonl``, ``config/``, ``weights/``)."""
    output_dir = Path(output_dir)
    summary = json.loads((output_dir / "summary.json").read_text())
    epochs = {}
    for line in (output_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        epochs[int(row["epoch"])] = {k: row[k] for k in EPOCH_METRICS if k in row}
    env_file = output_dir / "environment.json"
    _, weights_config = load_weights(output_dir / "weights" / "final.npz")
    return RunRecord(
        source=str(output_dir),
        weights_sha256=summary["weights_sha256"],
        epochs=epochs,
        final={k: summary["metrics"][k] for k in FINAL_METRICS},
        env=json.loads(env_file.read_text()) if env_file.exists() else {},
        config_yaml=(output_dir / "config" / "config.yaml").read_text(),
        weights_config_yaml=weights_config,
    )


def record_from_mlflow(run_id: str, tracking_uri: str, workdir: Path) -> RunRecord:
    """Read a run's record from MLflow (tags, metric histories, config and weights artifacts)."""
    fetched = fetch_run(run_id, tracking_uri, workdir, artifacts=("config/config.yaml", "weights/final.npz"))
    history = fetched["history"]
    epochs: dict[int, dict[str, float]] = {}
    for name in EPOCH_METRICS:
        for step, value in history.get(name, {}).items():
            epochs.setdefault(step, {})[name] = value
    _, weights_config = load_weights(fetched["files"]["weights/final.npz"])
    return RunRecord(
        source=f"run {run_id}",
        weights_sha256=fetched["tags"].get("weights_sha256", ""),
        epochs=epochs,
        final={k: fetched["metrics"][k] for k in FINAL_METRICS if k in fetched["metrics"]},
        env={k: fetched["tags"][k] for k in ENV_TAGS if k in fetched["tags"]},
        config_yaml=fetched["files"]["config/config.yaml"].read_text(),
        weights_config_yaml=weights_config,
    )


def config_differences(a_yaml: str, b_yaml: str) -> list[str]:
    """``["optimizer.lr: 0.1 -> 0.05", ...]`` between two config texts (keys in either)."""
    a = _flat(OmegaConf.to_container(OmegaConf.create(a_yaml or "{}")))
    b = _flat(OmegaConf.to_container(OmegaConf.create(b_yaml or "{}")))
    # Where runs are tracked or how a run is named does not change its arithmetic.
    return [
        f"{k}: {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and not k.startswith(NOT_COMPARED)
    ]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


@dataclass
class Verdict:
    identical: bool
    rows: list[tuple[str, str, str, bool]]  # what, original, reproduction, same
    first_difference: str | None
    env_differences: list[str]
    config_differences: list[str]

    def render(self) -> str:
        width = max(len(r[0]) for r in self.rows) + 2
        lines = [f"{'':{width}}{'original':22}{'reproduction':22}same"]
        lines += [f"{w:{width}}{o[:20]:22}{n[:20]:22}{'yes' if s else 'NO'}" for w, o, n, s in self.rows]
        if self.identical:
            lines.append("verdict: IDENTICAL -- same weights bit for bit, same metrics at every epoch")
        else:
            lines.append(f"verdict: DIFFERENT -- first difference: {self.first_difference}")
            if self.config_differences:
                lines.append("config differs: " + "; ".join(self.config_differences))
            if self.env_differences:
                lines.append("environment differs: " + "; ".join(self.env_differences))
            elif not self.config_differences:
                lines.append("environment: same numpy, BLAS and thread count as recorded")
        return "\n".join(lines)


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def compare(original: RunRecord, new: RunRecord, used_config_yaml: str | None = None) -> Verdict:
    """Side by side: weights hash, each per-epoch metric at every epoch, test metrics, environment."""
    rows: list[tuple[str, str, str, bool]] = []
    first: str | None = None
    same_w = original.weights_sha256 == new.weights_sha256
    rows.append(("weights_sha256", original.weights_sha256[:16], new.weights_sha256[:16], same_w))
    epochs = sorted(set(original.epochs) | set(new.epochs))
    for name in EPOCH_METRICS:
        diff_at = None
        for e in epochs:
            if not _same(original.epochs.get(e, {}).get(name), new.epochs.get(e, {}).get(name)):
                diff_at = e
                break
        last = epochs[-1] if epochs else 0
        o = original.epochs.get(diff_at or last, {}).get(name)
        n = new.epochs.get(diff_at or last, {}).get(name)
        label = f"{name} ({len(epochs)} epochs)"
        rows.append((label, _fmt(o), _fmt(n), diff_at is None))
        if diff_at is not None and first is None:
            first = f"{name} at epoch {diff_at} ({_fmt(o)} vs {_fmt(n)})"
    for name in FINAL_METRICS:
        o, n = original.final.get(name), new.final.get(name)
        same = _same(o, n)
        rows.append((name, _fmt(o), _fmt(n), same))
        if not same and first is None:
            first = f"{name} ({_fmt(o)} vs {_fmt(n)})"
    if not same_w and first is None:
        first = "weights_sha256 (the metrics agree but the weights differ in some bit)"
    env_diffs = [
        f"{k}: {original.env.get(k, '?')} -> {new.env.get(k, '?')}"
        for k in ENV_TAGS
        if k in original.env and original.env.get(k) != new.env.get(k)
    ]
    made_by = original.weights_config_yaml or original.config_yaml
    cfg_diffs = config_differences(made_by, used_config_yaml if used_config_yaml is not None else new.config_yaml)
    identical = first is None
    return Verdict(identical, rows, first, env_diffs, cfg_diffs)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.6g}" if isinstance(v, float) and not float(v).is_integer() else str(v)
