"""Which figures of docs/figures.json each benchmark produces: ``figures_of(result)`` -> {figure key: value}.

A value fits the format its figure already has in the record (scripts/figures.py fills one with the other), so a
benchmark that measures something new needs its figure added to the record once, with a format, then a line here.
Figures measured by other commands (a training run's accuracy, an aside measured once) are edited in the record by
hand, with their date, machine and command.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path
from typing import Any

LOOP_ROWS = {32: 0, 128: 1, 512: 2}  # batch size -> row of loop.table; row 3 is seed_baseline
CONDITIONS = ["alone", "taskset", "quota", "neighbour", "two at once"]  # the rows of contention.table
STEP_BATCHES = [32, 128, 512]  # the rows of contention.steps
AUGMENTS = ["affine", "elastic", "shift"]  # the rows of augment.table
PRUNERS = ["unpruned", "successive_halving", "hyperband"]  # the rows of search.table
SPEEDUPS = ["fast_exit", "figures_in_background", "skip_requirements_check"]  # measured by `run --speedups`


def figures_of(result: dict[str, Any], figures: dict[str, dict], root: Path) -> dict[str, Any]:
    """The figures a benchmark's ``result`` (the JSON scripts/bench.py wrote) gives, by key; tables of which it
    measured only some rows keep the rest from ``figures``."""
    kind = result["benchmark"]
    make = {"run": run_figures, "loop": loop_figures, "contention": contention_figures, "waits": waits_figures,
            "steps": steps_figures, "sweep": sweep_figures, "search": search_figures}.get(kind)
    if make is None:
        raise SystemExit(f"error: no figures on the pages come from `bench.py {kind}`")
    return make(result, copy.deepcopy(figures), root)


def refuse(why: str) -> None:
    raise SystemExit(f"error: not recorded: {why}")


def run_figures(result: dict, figures: dict, root: Path) -> dict[str, Any]:
    if result["overrides"] or result.get("costs_vs"):
        refuse("the pages quote the default run alone (no overrides, no --with)")
    med = result["median"]
    values: dict[str, Any] = {"run.default.epochs_s": med["epochs_s"], "run.default.outside_s": med["outside_epochs_s"],
                              "run.default.peak_rss_gb": med["peak_rss_gb"], "run.default.runs": len(result["runs"])}
    if result.get("speedup_saves_s"):
        values |= {f"speedups.{name}": {"saves_s": result["speedup_saves_s"][name], "pairs": len(result["runs"])}
                   for name in SPEEDUPS}
    return values


def loop_figures(result: dict, figures: dict, root: Path) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if result["rows"]:
        if {int(b) for b in result["shards"]} != set(LOOP_ROWS):
            refuse("loop.table has the rows of batch sizes 32, 128 and 512")
        table = figures["loop.table"]["value"]
        for row in result["rows"]:
            i = LOOP_ROWS.get(row["batch_size"], 3) if row["name"].startswith("default") else 3
            table[i] = {k: row[k] for k in ("ours_s", "bound_s", "ours_over_bound", "torch_s", "ours_over_torch")}
        values["loop.table"] = table
        values["loop.gemm_peak"] = {"gflops": result["gemm_peak_gflops"], "threads": result["threads"]}
    a = result["augment"]
    if a["augment"] in AUGMENTS:
        table = figures["augment.table"]["value"]
        table[AUGMENTS.index(a["augment"])] = {"plain_s": a["plain_s"], "augmented_s": a["augmented_s"],
                                               "overhead_pct": 100 * a["overhead"]}
        values["augment.table"] = table
    return values


def contention_figures(result: dict, figures: dict, root: Path) -> dict[str, Any]:
    """The table's cells are "before → after": a run of another checkout's code (``--code``) fills the left side,
    a run of this one the right."""
    side = "after" if Path(result["code"]).resolve() == root.resolve() else "before"
    table = figures["contention.table"]["value"]
    for row in result["rows"]:
        if row["condition"] not in CONDITIONS:
            continue
        table[CONDITIONS.index(row["condition"])][side] = {
            "threads": row["threads"]["default"], "default": row["default"], "threads1": row["threads=1"],
            "torch": row["torch"], "over_threads1": row["default/threads=1"], "over_torch": row["default/torch"],
            "augmented_over_threads1": row["augmented default/threads=1"]}
    return {"contention.table": table}


def steps_figures(result: dict, figures: dict, root: Path) -> dict[str, Any]:
    """contention.steps: a row per batch size of ``bench.py steps``, in the table's order."""
    rows = {row["batch"]: row for row in result["rows"]}
    if sorted(rows) != STEP_BATCHES:
        refuse(f"contention.steps has the rows of batches {STEP_BATCHES}; this run measured {sorted(rows)}")
    table = []
    for batch in STEP_BATCHES:
        row, us = rows[batch], rows[batch]["us_per_step"]
        table.append({"batch": batch, "threads1": us["threads=1"], "shard_by_shard": us["shard by shard"],
                      "fused": us["fused"], "parallel": us["parallel"],
                      "shard_by_shard_over": row["shard_by_shard/threads=1"], "fused_over": row["fused/threads=1"],
                      "same_bits": "yes" if row["fused"] else "no (shard by shard kept)"})
    return {"contention.steps": table}


def waits_figures(result: dict, figures: dict, root: Path) -> dict[str, Any]:
    per_call, trip = result["per_call_us"], result["round_trip_us"]
    return {
        "waits.table": [{"semaphore": per_call["semaphore ring (nobody asleep)"], "eventfd": per_call["eventfd write"],
                         "pipe": per_call["pipe write (1 byte)"]},
                        {"semaphore": per_call["semaphore try (succeeds)"]},
                        {k: trip[k] for k in ("semaphore", "eventfd", "pipe")}],
        "waits.long_wait": {"cpu_ms": 1000 * result["long_wait_cpu_s"],
                            "percent": 100 * result["long_wait_cpu_s"] / result["long_wait_s"]},
    }


def sweep_figures(result: dict, figures: dict, root: Path) -> dict[str, Any]:
    med, cpu = result["median_seconds"], result["median_cpu_seconds"]
    grid = {"basic_s": med["basic"], "parallel_s": med["parallel"], "speedup": result["speedup_median_of_ratios"]}
    if result["overrides"] == ["trainer.threads=1"]:
        return {"sweep.threads1": grid}
    if result["overrides"] or result["members"] != 4 or result["epochs"] != 10:
        refuse("the pages quote 4 members x 10 epochs of the default config (or trainer.threads=1)")
    values: dict[str, Any] = {"sweep.grid": grid}
    if "basic" in cpu:
        values["sweep.basic_cpu"] = {"cores_busy": cpu["basic"] / med["basic"], "cpu_s": cpu["basic"],
                                     "bound": result["speedup_bound_at_basic_cpu"]}
    if "cold" in med:
        values["sweep.cold_s"] = med["cold"]
        values["speedups.warm_workers"] = {"saves_s": result["warm_workers_saves_s"],
                                           "pairs": len(result["seconds"]["cold"])}
    return values


def search_figures(result: dict, figures: dict, root: Path) -> dict[str, Any]:
    if "jobs" in result:
        return search_workers_figures(result)
    if result["pruners"] != PRUNERS[1:] or len(result["runs"]["unpruned"]) != 3:
        refuse("search.table has the unpruned search, successive_halving and hyperband over 3 seeds")
    rows = []
    full = result["runs"]["unpruned"]
    for name in PRUNERS:
        runs = result["runs"][name]
        row = {"epochs": [r["epochs"] for r in runs], "seconds": statistics.median(r["seconds"] for r in runs),
               "best": [r["best_val_accuracy"] for r in runs]}
        if name in result["paired"]:
            paired = result["paired"][name]
            row.update(epoch_pct=100 * paired["median_epoch_fraction"], time_pct=100 * paired["median_time_ratio"],
                       gap=-paired["median_val_accuracy_gap_pp"])
        rows.append(row)
    halving = result["runs"]["successive_halving"]
    worst = max(100 * (f["best_val_accuracy"] - p["best_val_accuracy"]) for f, p in zip(full, halving))
    return {"search.table": rows, "search.worst_gap": worst}


def search_workers_figures(result: dict) -> dict[str, Any]:
    """``search --jobs 2``: the batch-synchronous against the asynchronous search, seed by seed, and the pairs."""
    if result["jobs"] != 2 or result["pruners"] != ["successive_halving"] or len(result["runs"]["async"]) != 3:
        refuse("search.workers.table has 2 workers, successive_halving and 3 seeds")
    rows = [{"busy": [r["busy_fraction"] for r in runs], "seconds": [r["seconds"] for r in runs],
             "best": [r["best_val_accuracy"] for r in runs]}
            for runs in (result["runs"]["batch"], result["runs"]["async"])]
    gaps = [100 * (b["best_val_accuracy"] - a["best_val_accuracy"])
            for a, b in zip(result["runs"]["async"], result["runs"]["batch"])]
    paired = result["paired"]["async"]
    return {"search.workers.table": rows, "search.workers.time_pct": 100 * paired["median_time_ratio"],
            "search.workers.gap": paired["median_val_accuracy_gap_pp"],
            "search.workers.gap_range": {"low": min(gaps), "high": max(gaps)}}
