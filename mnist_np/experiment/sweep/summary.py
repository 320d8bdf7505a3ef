"""A sweep's outcome on its parent run: counts, the best member on validation, a sorted table, seed groups, importance,
plots.

The best member is chosen by validation accuracy, never by test accuracy,
which is shown but never decides.
"""

from __future__ import annotations

import csv
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from mnist_np import plots
from mnist_np.common.files import atomic_write_text
from mnist_np.common.locks import holder
from mnist_np.common.procs import is_dead
from mnist_np.experiment.config.overrides import parse_override
from mnist_np.experiment.run.tables import table_csv, table_markdown
from mnist_np.experiment.sweep.importance import EVALUATOR, IMPORTANCE_FILE, IMPORTANCE_TAG, param_importance
from mnist_np.experiment.sweep.info import OBJECTIVES, SweepInfo
from mnist_np.experiment.sweep.records import send_record, unrecorded_members
from mnist_np.experiment.sweep.seed_groups import by_config, finite_number, shown
from mnist_np.experiment.sweep.workers import busy_fraction, taken_times
from mnist_np.tracking.conventions import (
    CHAMPION_TAG,
    FAILURE_TAG,
    KILLED_REASON,
    OUTPUT_DIR_TAG,
    PROCESS_TAG,
    PRUNED_TAG,
    REGISTERED_TAG,
)
from mnist_np.tracking.journal import JOURNAL_FILE, read_journal
from mnist_np.tracking.queries import child_runs, fetch_run, latest_metrics, run_tags
from mnist_np.tracking.registry import CHAMPION, register_run_model, set_champion
from mnist_np.tracking.runs import close_run
from mnist_np.tracking.sync import sync_output_dir
from mnist_np.tracking.tracker import MlflowTracker

log = logging.getLogger(__name__)
SUMMARY_DIR = "sweep_summary"


@dataclass
class SweepSummary:
    """The outcome of a sweep, as the parent run records it."""

    total: int
    finished: int
    failed: int
    best: dict[str, Any] | None
    rows: list[dict[str, Any]]
    pruned: int = 0  # finished members a guided search's pruner stopped early
    busy: float | None = None  # workers_busy_fraction, for members taken by workers at their own pace

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.total > 0


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
                "failure_reason": (c["tags"].get(FAILURE_TAG, "").strip().splitlines() or [""])[0],  # one line per row
                PRUNED_TAG: c["tags"].get(PRUNED_TAG, ""),
            }
        )
    # Finished members first, best validation accuracy first; test accuracy is shown, never used.
    rows.sort(key=lambda r: (r["status"] != "FINISHED",
                             -(r["val_accuracy"] if finite_number(r["val_accuracy"]) else -1.0), r["name"]))
    finished = [r for r in rows if r["status"] == "FINISHED" and finite_number(r["val_accuracy"])]
    return SweepSummary(
        total=len(rows),
        finished=sum(r["status"] == "FINISHED" for r in rows),
        failed=sum(r["status"] != "FINISHED" for r in rows),
        best=finished[0] if finished else None,
        # The column only where a pruner ran: a grid's table stays as it was.
        rows=(rows if any(r[PRUNED_TAG] for r in rows)
              else [{k: v for k, v in r.items() if k != PRUNED_TAG} for r in rows]),
        pruned=sum(bool(r[PRUNED_TAG]) for r in rows),
    )


def _choice(child: Mapping[str, Any], key: str) -> str:
    """A swept group option (``optimizer=adam``) is not a param; find it in the run's overrides tag."""
    for line in child["tags"].get("overrides", "").split():
        k, v = parse_override(line)
        if k == key:
            return v
    return ""


def close_sweep(info: SweepInfo, crash: str | None = None, status: str = "FAILED",
                members_done: bool = False) -> SweepSummary:
    """Give the parent run its summary and final status.

    A member run still RUNNING whose output dir shows it ended (it lost MLflow
    on the way) is synced from that dir. Any other RUNNING member is closed as
    dead when ``members_done`` (every member has returned) or when its
    process is gone; otherwise the sweep is still going and nothing is closed.

    Args:
        crash: why the sweep itself stopped early (then the parent ends ``status``).

    Raises:
        TrackingUnavailable: the server does not answer.
        ValueError: members are still running (only without ``members_done``).
    """
    tracker = MlflowTracker(info.tracking_uri, info.experiment_name, run_id=info.parent_run_id)
    # Members recorded only in their dirs (MLflow was down for them) become children first.
    for output_dir in unrecorded_members(Path(info.sweep_dir)):
        send_record(info, output_dir)
    _settle_members(tracker, info, members_done)
    children = child_runs(tracker.client, tracker.experiment_id, info.parent_run_id)
    summary = summarize(children, list(info.swept))
    summary.busy = busy_fraction(children, info.workers, taken_times(info.sweep_dir)) if info.workers else None
    try:
        _record(tracker, info, summary, pareto(children, info))
    except Exception as e:  # the members' runs are safe; only the summary is missing
        log.warning("could not record the sweep summary in MLflow: %s", e)
    if info.register_as and summary.best:
        _crown(tracker, info, summary.best)
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


def _crown(tracker: MlflowTracker, info: SweepInfo, best: Mapping[str, Any]) -> None:
    """Register the best member's model (once, also when the sweep is summarised again) and point ``champion`` at it."""
    try:
        registered = tracker.client.get_run(best["run_id"]).data.tags.get(REGISTERED_TAG, "")
        name, _, version = registered.rpartition("/")
        if name != info.register_as:
            tags = {"sweep": info.parent_run_id, "sweep_name": info.name, "val_accuracy": f"{best['val_accuracy']:.4f}",
                    "test_accuracy": f"{best['test_accuracy']:.4f}" if finite_number(best.get("test_accuracy")) else ""}
            version = register_run_model(info.tracking_uri, info.register_as or "", best["run_id"], tags)
        set_champion(info.tracking_uri, info.register_as or "", version)
        tracker.set_tags({CHAMPION_TAG: f"models:/{info.register_as}/{version}"})
        log.info("best member %s registered: models:/%s@%s is version %s", best["name"], info.register_as, CHAMPION,
                 version)
    except Exception as e:  # noqa: BLE001 -- the sweep and its members are safe; only the registry entry is missing
        log.warning("could not register the best member as %r: %s", info.register_as, e)


def _settle_members(tracker: MlflowTracker, info: SweepInfo, members_done: bool) -> None:
    """Members left RUNNING: synced from their dir if they ended, closed if they are dead, else an error.

    A member whose dir a live process has locked is never closed, whatever
    ``members_done`` says: a launcher that gave up (submitit, at its first
    failed job) leaves its other jobs running on the cluster.
    """
    for c in child_runs(tracker.client, tracker.experiment_id, info.parent_run_id):
        if c["status"] != "RUNNING":
            continue
        output_dir = Path(c["tags"].get(OUTPUT_DIR_TAG, ""))
        journal = output_dir / JOURNAL_FILE
        alive = holder(output_dir) if output_dir.is_dir() else None
        if alive is not None:
            if not members_done:
                raise ValueError(f"member run {c['run_id']} of sweep {info.name!r} is still running ({alive.line()}); "
                                 "sync the sweep when it is over")
            log.warning("sweep member %s is still running (%s): summarised without it; "
                        "summarise again with: python scripts/sync.py %s", c["name"], alive.line(), info.sweep_dir)
        elif journal.is_file() and read_journal(journal).end is not None:
            log.info("%s", sync_output_dir(journal.parent).line())
        elif members_done or is_dead(c["tags"].get(PROCESS_TAG, "")):
            # Every member has returned (or this one's process is gone): nobody will close this run.
            close_run(tracker.client, c["run_id"], "FAILED", KILLED_REASON)
        else:
            raise ValueError(f"member run {c['run_id']} of sweep {info.name!r} is still running; sync the "
                             "sweep when it is over")


def _record(tracker: MlflowTracker, info: SweepInfo, summary: SweepSummary, pareto: Pareto | None) -> None:
    """Counts and the best member as the parent's metrics and tags; the table and plots as its artifacts."""
    metrics: dict[str, float] = {
        "members": summary.total,
        "members_finished": summary.finished,
        "members_failed": summary.failed,
    }
    tags = {"members_failed": str(summary.failed), "members_finished": str(summary.finished)}
    if info.search is not None:
        metrics["members_pruned"] = summary.pruned
    if summary.busy is not None:
        metrics["workers_busy_fraction"] = summary.busy
    if summary.best:
        b = summary.best
        for key in ("val_accuracy", "test_accuracy", "epochs", "train_seconds"):
            if finite_number(b.get(key)):
                metrics[f"best_{key}" if key != "val_accuracy" else "best_val_accuracy"] = float(b[key])
        tags.update({"best_run_id": b["run_id"], "best_run_name": b["name"]})
        for key in info.swept:
            tags[f"best.{key}"] = str(b.get(key, ""))
    # Only values that changed: summarising again (after a sync) must not repeat a metric.
    current = latest_metrics(tracker.client, info.parent_run_id)
    changed = {k: v for k, v in metrics.items() if current.get(k) != v}
    if changed:
        tracker.log_metrics(changed)
    tracker.set_tags(tags)

    out = Path(info.sweep_dir) / SUMMARY_DIR
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.csv", table_csv(summary.rows))
    atomic_write_text(out / "summary.md", table_markdown(summary.rows))
    groups = by_config(summary.rows, list(info.swept))
    atomic_write_text(out / "by_config.csv", table_csv(groups))
    atomic_write_text(out / "by_config.md", table_markdown(shown(groups)))
    if pareto is not None:
        atomic_write_text(out / "pareto.csv", table_csv(pareto.front))
        tracker.set_tags({"pareto_run_ids": ",".join(r["run_id"] for r in pareto.front)})
    importance = _record_importance(tracker, out, summary, info)
    try:
        plots.sweep_plots(out, summary.rows, list(info.swept))
        if importance is not None:
            plots.importance_plot(out / "importance.png", importance, summary.finished, EVALUATOR)
        if pareto is not None:
            plots.pareto_plot(out / "pareto_front.png", pareto.points, pareto.front, pareto.keys[:2])
    except Exception as e:  # a figure must never lose the table
        log.warning("sweep plots failed: %s", e)
    tracker.log_artifacts(out, SUMMARY_DIR)


def _record_importance(tracker: MlflowTracker, out: Path, summary: SweepSummary,
                       info: SweepInfo) -> list[dict[str, Any]] | None:
    """``importance.csv`` and the tag ``most_important_param``, where two swept keys or more vary (see
    :mod:`mnist_np.experiment.sweep.importance`); None where they do not, or where it could not be computed."""
    try:
        importance = param_importance(summary.rows, info.swept)
    except Exception as e:  # noqa: BLE001 -- the table and the other figures matter more
        log.warning("parameter importance failed: %s", e)
        return None
    if importance is not None:
        atomic_write_text(out / IMPORTANCE_FILE, table_csv(importance))
        tracker.set_tags({IMPORTANCE_TAG: importance[0]["param"]})
    return importance


def recorded_importance(tracking_uri: str, parent_run_id: str) -> tuple[str, list[dict[str, Any]]]:
    """What a sweep's parent recorded (``sweep_summary/importance.csv``, as its summary wrote it): a title line and the
    rows.

    Raises:
        ValueError: one line -- no such run, not a sweep's parent, or a sweep without importance (and why).
    """
    tags = run_tags(parent_run_id, tracking_uri)
    if "sweep_dir" not in tags:
        raise ValueError(f"run {parent_run_id} is not a sweep's parent run; --importance needs one")
    if IMPORTANCE_TAG not in tags:
        raise ValueError(f"sweep {tags.get('mlflow.runName', parent_run_id)!r} has no importance: fewer than two swept "
                         "parameters vary among its finished members, or it was summarised before importance existed "
                         f"(summarise it again: python scripts/sync.py {tags['sweep_dir']})")
    with tempfile.TemporaryDirectory() as tmp:
        artifact = f"{SUMMARY_DIR}/{IMPORTANCE_FILE}"
        with open(fetch_run(parent_run_id, tracking_uri, Path(tmp), (artifact,))["files"][artifact], newline="") as f:
            rows = [{"param": r["param"], "importance": float(r["importance"])} for r in csv.DictReader(f)]
    title = (f"sweep {tags.get('mlflow.runName', parent_run_id)!r}: importance of {len(rows)} swept parameters to "
             f"validation accuracy over {tags.get('members_finished', '?')} finished members ({EVALUATOR})")
    return title, rows


@dataclass
class Pareto:
    """A multi-objective search's finished members (``points``) and those on its Pareto front, as table rows."""

    keys: list[str]  # the objectives' metric names
    points: list[dict[str, Any]]
    front: list[dict[str, Any]]


def pareto(children: Sequence[Mapping[str, Any]], info: SweepInfo) -> Pareto | None:
    """The Pareto front of a search with several objectives (None otherwise).

    A finished member is on the front when no other finished member is at
    least as good in every objective and better in one. Rows: ``name,
    run_id`` and the objectives' metrics; the front best first in the first objective.
    """
    search = info.search or {}
    if len(search.get("objectives", [])) < 2:
        return None
    keys = [OBJECTIVES[o] for o in search["objectives"]]
    signs = [1.0 if d == "maximize" else -1.0 for d in search["directions"]]
    done = [c for c in children if c["status"] == "FINISHED" and all(finite_number(c["metrics"].get(k)) for k in keys)]
    points = [{"name": c["name"], "run_id": c["run_id"], **{k: c["metrics"][k] for k in keys}} for c in done]
    scores = [[sign * p[k] for k, sign in zip(keys, signs)] for p in points]

    def dominated(a: list[float]) -> bool:
        return any(all(x >= y for x, y in zip(b, a)) and any(x > y for x, y in zip(b, a)) for b in scores)

    ranked = sorted(zip(scores, points), key=lambda pair: [-x for x in pair[0]])
    return Pareto(keys, points, [p for score, p in ranked if not dominated(score)])
