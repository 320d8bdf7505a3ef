"""``--multirun`` sweeps in MLflow: one parent run per sweep, every member a child.

Hydra runs :class:`MlflowSweepCallback` in the process that drives the sweep
(whatever the sweeper and launcher): before any member starts it creates (and
migrates) the store once, opens the parent run and writes its id to
``<sweep dir>/mlflow_sweep.json``; every member, in whatever process or node
it runs, finds the parent there and tags its own run as a child. When the
sweep ends the callback closes any member run left RUNNING by a process that
died, and gives the parent the sweep's summary: counts, the best member by
validation accuracy (never by test accuracy), a sorted table (CSV and
Markdown) and plots of validation accuracy against each swept parameter.

MLflow itself is reached only through :mod:`mnist_np.tracking`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

SWEEP_FILE = "mlflow_sweep.json"
SUMMARY_DIR = "sweep_summary"
# Keys that default_run_name already spells out (mlp128x2-sgd-lr0.1-bs128).
NAME_KEYS = frozenset(
    {"model.hidden_size", "model.num_hidden_layers", "optimizer", "optimizer.name", "optimizer.lr", "trainer.batch_size", "data", "data.name"}
)
DEAD_MEMBER_REASON = "the member's process ended without closing its run (killed from outside: kill -9, out of memory, node lost)"


@dataclass
class SweepInfo:
    """What members need to join the sweep, shared through ``<sweep dir>/mlflow_sweep.json``."""

    parent_run_id: str
    tracking_uri: str
    experiment_name: str
    name: str
    sweep_dir: str
    swept: dict[str, str] = field(default_factory=dict)  # key -> its sweep spec, e.g. "64,128,256"
    # Every store the sweep has a parent run in -> that run's id (the sweep's
    # own, and copies made by syncing its dir into other stores).
    parents: dict[str, str] = field(default_factory=dict)

    def save(self) -> Path:
        path = Path(self.sweep_dir) / SWEEP_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, sweep_dir: str | Path) -> "SweepInfo | None":
        path = Path(sweep_dir) / SWEEP_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


@dataclass
class SweepSummary:
    """The outcome of a sweep, as the parent run records it."""

    total: int
    finished: int
    failed: int
    best: dict[str, Any] | None
    rows: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.total > 0


# The sweep the callback opened in this process: closed by on_multirun_end, or
# by finish_open_sweep() from scripts/train.py when the sweep crashed first.
_open: SweepInfo | None = None
last_summary: SweepSummary | None = None
unsynced: str | None = None  # set when MLflow was unreachable as the sweep ended: why


def swept_parameters(task_overrides: Sequence[str], sweeper_params: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The keys a sweep varies, with their specs: ``{"model.hidden_size": "64,128,256"}``.

    Grid sweeps come from the command-line overrides; guided searches (Optuna)
    also from ``hydra.sweeper.params``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    # The command line wins over the config's search space, as in the Optuna sweeper.
    swept = {str(key): str(spec) for key, spec in (sweeper_params or {}).items()}
    for o in OverridesParser.create().parse_overrides(list(task_overrides)):
        if o.is_sweep_override():
            swept[o.key_or_group] = o.input_line.split("=", 1)[1]
    return swept


def sweep_run_name(swept: Mapping[str, str]) -> str:
    """``sweep model.hidden_size=64,128 optimizer.lr=0.01,0.1`` (MLflow caps names at 250 characters)."""
    name = "sweep " + " ".join(f"{k}={v}" for k, v in swept.items()) if swept else "sweep"
    return name[:250]


def member_run_name(base: str, job_overrides: Sequence[str], swept: Mapping[str, str], explicit_base: bool) -> str:
    """A member's name: the base name plus each swept value the base does not already show.

    ``mlp128-sgd-lr0.1-bs128`` stays as is in a sweep over hidden size and lr;
    a sweep over weight decay gives ``mlp128-sgd-lr0.1-bs128-weight_decay=0.0005``.
    Members differ exactly where their overrides differ, so names are unique.
    """
    parts = [base]
    for line in job_overrides:
        key, _, value = line.partition("=")
        key = key.lstrip("+~")
        if key in swept and (explicit_base or key not in NAME_KEYS):
            parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return "-".join(parts)[:250]


def summarize(children: Sequence[Mapping[str, Any]], swept_keys: Sequence[str]) -> SweepSummary:
    """Counts, the best finished member by ``best_val_accuracy``, and one table row per member."""
    rows = []
    for c in children:
        m = c["metrics"]
        rows.append(
            {
                "name": c["name"],
                "status": c["status"],
                **{k: c["params"].get(k, _choice(c, k)) for k in swept_keys},
                "val_accuracy": m.get("best_val_accuracy"),
                "test_accuracy": m.get("test_accuracy"),
                "epochs": m.get("epochs_trained"),
                "train_seconds": m.get("train_seconds"),
                "run_id": c["run_id"],
                "failure_reason": c["tags"].get("failure_reason", ""),
            }
        )
    # Finished members first, best validation accuracy first; test accuracy is shown, never used.
    rows.sort(key=lambda r: (r["status"] != "FINISHED", -(r["val_accuracy"] if _finite(r["val_accuracy"]) else -1.0), r["name"]))
    finished = [r for r in rows if r["status"] == "FINISHED" and _finite(r["val_accuracy"])]
    return SweepSummary(
        total=len(rows),
        finished=sum(r["status"] == "FINISHED" for r in rows),
        failed=sum(r["status"] != "FINISHED" for r in rows),
        best=finished[0] if finished else None,
        rows=rows,
    )


def _choice(child: Mapping[str, Any], key: str) -> str:
    """A swept group option (``optimizer=adam``) is not a param; find it in the run's overrides tag."""
    for line in child["tags"].get("overrides", "").split():
        k, _, v = line.partition("=")
        if k.lstrip("+") == key:
            return v
    return ""


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def table_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def table_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "(no members)\n"
    keys = [k for k in rows[0] if k not in ("run_id",)]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v.is_integer():
                return str(int(v))
            return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
        return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")[:120]

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def varying_params(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Params whose values differ between ``runs`` (what a comparison should show)."""
    keys = sorted({k for r in runs for k in r["params"]})
    skip = ("mlflow.", "resume", "data.dir", "data.cache_dir", "trainer.progress")
    return [k for k in keys if not k.startswith(skip) and len({r["params"].get(k) for r in runs}) > 1]


def table_text(rows: Sequence[Mapping[str, Any]], drop: Sequence[str] = ("run_id", "failure_reason")) -> str:
    """Rows as an aligned plain-text table for a terminal."""
    if not rows:
        return "(no runs)\n"
    keys = [k for k in rows[0] if k not in drop]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return str(int(v)) if v.is_integer() and abs(v) >= 1 else (f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}")
        return "" if v is None else str(v)

    cells = [[cell(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines) + "\n"


class MlflowSweepCallback(Callback):
    """Hydra callback: a parent MLflow run around every ``--multirun`` sweep."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _open
        from mnist_np.warm_workers import preload_joblib_workers

        # First, so the workers' imports overlap everything below (see warm_workers).
        preload_joblib_workers(OmegaConf.to_container(config.hydra.launcher, resolve=True))
        from mnist_np.config import PROJECT_ROOT
        from mnist_np.runner import git_tags
        from mnist_np.tracking import MlflowTracker, default_tracking_uri

        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        task = list(config.hydra.overrides.task)
        search_space = config.hydra.sweeper.get("params")  # Optuna's; the basic sweeper's is null
        swept = swept_parameters(task, OmegaConf.to_container(search_space) if search_space else None)
        uri = config.mlflow.tracking_uri or default_tracking_uri(PROJECT_ROOT)
        # Creating the tracker creates and migrates a new SQLite store here,
        # once, before parallel workers could race to do it.
        tracker = MlflowTracker(uri, config.mlflow.experiment_name)
        name = config.mlflow.sweep_name or sweep_run_name(swept)
        params = parent_params(task, swept)
        tags = {
            "sweep_dir": str(sweep_dir),
            "overrides": " ".join(task),
            "sweeper": str(config.hydra.sweeper.get("_target_", "")).rsplit(".", 1)[-1],
            "launcher": str(config.hydra.launcher.get("_target_", "")).rsplit(".", 1)[-1],
            "mlflow.source.name": "scripts/train.py --multirun",
            **git_tags(),
        }
        from mnist_np.procs import process_identity
        from mnist_np.runner import KILLED_REASON
        from mnist_np.tracking import PROCESS_TAG

        tracker.reap_dead_runs(KILLED_REASON)
        run_id = tracker.start(name, params, {**tags, PROCESS_TAG: process_identity()})
        _open = SweepInfo(run_id, uri, config.mlflow.experiment_name, name, str(sweep_dir), swept, parents={uri: run_id})
        _open.save()
        log.info("MLflow parent run %r (%s) for the sweep in %s", name, run_id, sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        finish_open_sweep()


def parent_params(task: Sequence[str], swept: Mapping[str, str]) -> dict[str, str]:
    """The parent run's params: the sweep's command-line overrides, then its search space."""
    params = {}
    for line in task:
        key, _, value = line.partition("=")
        params[key.lstrip("+~")] = value
    params.update(swept)
    return params


def parent_in_store(info: SweepInfo, tracking_uri: str, current: bool = True) -> SweepInfo:
    """The sweep as seen from ``tracking_uri``: its parent run there, made if it has none yet.

    For syncing a sweep dir into another store: the members become children
    of this parent, and the summary goes to it. The parent copies the
    original's name, params (the overrides in ``multirun.yaml``) and its
    sweep dir. ``mlflow_sweep.json`` remembers every store's parent, so that
    syncing again finds the same one, and with ``current`` (a whole sweep
    dir synced) points at this one from then on; without (one member
    synced) it goes on pointing where it did.
    """
    from mnist_np.tracking import MlflowTracker

    if tracking_uri == info.tracking_uri:
        return info
    parents = {info.tracking_uri: info.parent_run_id, **info.parents}
    tracker = MlflowTracker(tracking_uri, info.experiment_name, run_id=parents.get(tracking_uri))
    if tracker.run_id is None or tracker.remote() is None:
        multirun = Path(info.sweep_dir) / "multirun.yaml"
        task = list(OmegaConf.load(multirun).hydra.overrides.task) if multirun.is_file() else []
        tracker.start(info.name, parent_params(task, info.swept), {
            "sweep_dir": info.sweep_dir,
            "overrides": " ".join(task),
            "mlflow.source.name": "scripts/sync.py",
            "copied_from": f"{info.tracking_uri} run {info.parent_run_id}",
        })
        parents[tracking_uri] = tracker.run_id
    copy = replace(info, parent_run_id=parents[tracking_uri], tracking_uri=tracking_uri, parents=parents)
    (copy if current else replace(info, parents=parents)).save()
    return copy


def finish_open_sweep(crash: str | None = None, status: str = "FAILED") -> SweepSummary | None:
    """Summarise and close the sweep this process opened, if it is still open.

    Args:
        crash: why the sweep itself stopped early (then the parent ends ``status``).
    """
    global _open, last_summary, unsynced
    info, _open = _open, None
    if info is None:
        return None
    from mnist_np.tracking import TrackingUnavailable, error_line

    try:
        last_summary = close_sweep(info, crash, status, members_done=True)
    except Exception as e:  # noqa: BLE001 -- e.g. the server died between two of the closing calls
        # The members' results are in MLflow or their dirs; the summary can be made later, from MLflow.
        unsynced = str(e) if isinstance(e, TrackingUnavailable) else error_line(e)[:500]
        log.warning("MLflow is unreachable as the sweep ends (%s); upload and summarise it later with: "
                    "python scripts/sync.py %s", unsynced, info.sweep_dir)
        return None
    return last_summary


def close_sweep(info: SweepInfo, crash: str | None = None, status: str = "FAILED", members_done: bool = False) -> SweepSummary:
    """Give the parent run its summary and final status.

    A member run still RUNNING whose output dir shows it ended (it lost MLflow
    on the way) is synced from that dir. Any other RUNNING member is closed as
    dead when ``members_done`` (every member has returned) or when its
    process is gone; otherwise the sweep is still going and nothing is closed.

    Raises:
        TrackingUnavailable: the server does not answer.
        ValueError: members are still running (only without ``members_done``).
    """
    from mnist_np.procs import is_dead
    from mnist_np.sync import read_journal, sync_output_dir
    from mnist_np.tracking import JOURNAL_FILE, PROCESS_TAG, MlflowTracker

    tracker = MlflowTracker(info.tracking_uri, info.experiment_name, run_id=info.parent_run_id)
    children = tracker.child_runs()
    for c in children:
        if c["status"] != "RUNNING":
            continue
        journal = Path(c["tags"].get("hydra_output_dir", "")) / JOURNAL_FILE
        if journal.is_file() and read_journal(journal).end is not None:
            log.info("%s", sync_output_dir(journal.parent).line())
        elif members_done or is_dead(c["tags"].get(PROCESS_TAG, "")):
            # Every member has returned (or this one's process is gone): nobody will close this run.
            tracker.close_other(c["run_id"], "FAILED", DEAD_MEMBER_REASON)
        else:
            raise ValueError(f"member run {c['run_id']} of sweep {info.name!r} is still running; sync the sweep when it is over")
    children = tracker.child_runs()
    summary = summarize(children, list(info.swept))
    try:
        _record(tracker, info, summary)
    except Exception as e:  # the members' runs are safe; only the summary is missing
        log.warning("could not record the sweep summary in MLflow: %s", e)
    if crash:
        tracker.end(status, crash)
    elif summary.finished == 0:
        tracker.end("FAILED", f"all {summary.total} members failed")
    else:
        tracker.end("FINISHED")
    log.info(
        "sweep %r: %d members, %d finished, %d failed%s",
        info.name, summary.total, summary.finished, summary.failed,
        f"; best {summary.best['name']} (val_accuracy {summary.best['val_accuracy']:.4f})" if summary.best else "",
    )
    return summary


def _record(tracker: Any, info: SweepInfo, summary: SweepSummary) -> None:
    metrics: dict[str, float] = {
        "members": summary.total,
        "members_finished": summary.finished,
        "members_failed": summary.failed,
    }
    tags = {"members_failed": str(summary.failed), "members_finished": str(summary.finished)}
    if summary.best:
        b = summary.best
        for key in ("val_accuracy", "test_accuracy", "epochs", "train_seconds"):
            if _finite(b.get(key)):
                metrics[f"best_{key}" if key != "val_accuracy" else "best_val_accuracy"] = float(b[key])
        tags.update({"best_run_id": b["run_id"], "best_run_name": b["name"]})
        for key in info.swept:
            tags[f"best.{key}"] = str(b.get(key, ""))
    # Only values that changed: summarising again (after a sync) must not repeat a metric.
    current = tracker.latest_metrics()
    changed = {k: v for k, v in metrics.items() if current.get(k) != v}
    if changed:
        tracker.log_metrics(changed)
    tracker.set_tags(tags)

    out = Path(info.sweep_dir) / SUMMARY_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.csv").write_text(table_csv(summary.rows))
    (out / "summary.md").write_text(table_markdown(summary.rows))
    try:
        from mnist_np.plots import sweep_plots

        sweep_plots(out, summary.rows, list(info.swept))
    except Exception as e:  # a figure must never lose the table
        log.warning("sweep plots failed: %s", e)
    tracker.log_artifacts(out, SUMMARY_DIR)


def record_invalid_member(cfg: DictConfig, error: str) -> None:
    """A sweep member whose config failed validation still shows up, as a FAILED child with the reason.

    (A single run with a bad config creates nothing; in a sweep the parent
    already exists and the member's absence would go unnoticed.)
    """
    from mnist_np.runner import hydra_context
    from mnist_np.tracking import PARENT_RUN_TAG, MlflowTracker, flatten

    ctx = hydra_context()
    info = SweepInfo.load(ctx.sweep_dir) if ctx.sweep_dir else None
    if info is None:
        return
    tracker = MlflowTracker(info.tracking_uri, info.experiment_name)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    name = member_run_name("invalid-config", ctx.overrides, info.swept, explicit_base=True)
    tracker.start(name, flatten(resolved), {PARENT_RUN_TAG: info.parent_run_id, "overrides": " ".join(ctx.overrides)})
    tracker.end("FAILED", f"invalid config: {error}")
