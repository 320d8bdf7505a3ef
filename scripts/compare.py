"""Compare runs from a terminal: a sorted table of an experiment's runs or a sweep's members.

    python scripts/compare.py                      # the experiment mnist-np
    python scripts/compare.py mnist-np-debug       # another experiment
    python scripts/compare.py <PARENT_RUN_ID>      # the members of one sweep
    python scripts/compare.py <PARENT_RUN_ID> --csv > sweep.csv
    python scripts/compare.py <PARENT_RUN_ID> --by-config   # one row per config: mean ± std over its seeds
    python scripts/compare.py <PARENT_RUN_ID> --importance  # which swept parameters mattered (PED-ANOVA)
    python scripts/compare.py mnist-np --filter "tags.baseline = 'true'"   # runs labelled baseline (tags=[baseline])

Columns: name, status, the params that differ between the runs, best
validation accuracy, test accuracy, epochs, training seconds. Sorted by
validation accuracy (finished runs first); the test set never decides.
With ``--by-config``, runs that differ only in ``seed`` are one row: n,
mean ± standard deviation of best validation and test accuracy, mean
training seconds, ranked on the mean validation accuracy (the parent run's
``sweep_summary/by_config.csv``). With ``--importance``, the sweep's
parameter importance as its parent recorded it (``sweep_summary/importance.csv``,
most important first; see :mod:`mnist_np.experiment.sweep.importance`).
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", default="mnist-np", help="an experiment name or a sweep's parent run id")
    parser.add_argument("--tracking-uri",
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else the project's mlflow.db)")
    parser.add_argument("--csv", action="store_true", help="CSV on stdout, for scripts")
    parser.add_argument("--by-config", action="store_true", help="one row per config, aggregated over its seeds")
    parser.add_argument("--importance", action="store_true",
                        help="a sweep's parameter importance, most important first")
    parser.add_argument("--filter", default="", help="an MLflow search filter, e.g. \"tags.`lr-study` = 'true'\" or "
                                                     "\"metrics.test_accuracy > 0.98\"")
    args = parser.parse_args()

    from mnist_np.experiment.run.tables import table_csv, table_text, varying_params
    from mnist_np.experiment.sweep.seed_groups import by_config, shown
    from mnist_np.experiment.sweep.summary import summarize
    from mnist_np.tracking.queries import runs_to_compare
    from mnist_np.tracking.uris import TrackingUnavailable, check_server, tracking_uri_or_default

    uri = tracking_uri_or_default(args.tracking_uri)
    if args.importance:
        return print_importance(uri, args.target, args.csv)
    try:
        check_server(uri)
        title, runs = runs_to_compare(uri, args.target, args.filter)
    except (TrackingUnavailable, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    varying = varying_params(runs)
    summary = summarize(runs, varying)
    rows = summary.rows
    if args.by_config:
        groups = by_config(rows, varying)
        rows = groups if args.csv else shown(groups)
    if args.csv:
        sys.stdout.write(table_csv(rows))
        return 0
    print(f"{title}: {summary.total} runs, {summary.finished} finished, {summary.failed} failed or unfinished"
          + (f"; {len(rows)} configs" if args.by_config else ""))
    sys.stdout.write(table_text(rows))
    return 0


def print_importance(uri: str, target: str, as_csv: bool) -> int:
    """``--importance``: the table the sweep's parent recorded, as text (or CSV); one error line when it has none."""
    from mnist_np.experiment.run.tables import table_csv, table_text
    from mnist_np.experiment.sweep.summary import recorded_importance
    from mnist_np.tracking.uris import TrackingUnavailable, check_server

    try:
        check_server(uri)
        title, rows = recorded_importance(uri, target)
    except (TrackingUnavailable, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not as_csv:
        print(title)
    sys.stdout.write(table_csv(rows) if as_csv else table_text(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
