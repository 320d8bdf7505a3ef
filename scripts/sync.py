"""Upload to MLflow what runs kept in their output dirs while the server was unreachable.

    python scripts/sync.py outputs/runs/<date>/<time>
    python scripts/sync.py outputs/sweeps/<date>/<time>            # every member, then the sweep's summary
    python scripts/sync.py <output dir> --tracking-uri http://127.0.0.1:5000   # into another store

Each run goes into the MLflow run its ``mlflow_run.json`` names, or into a
new run when the store has none (a sweep synced into another store gets
a parent run there too); only what MLflow misses is sent, so running it
twice sends nothing the second time. Prints one line per run. Exit status
0 when everything is synced, 1 when the server does not answer (or stops
answering during the sync: run it again), 2 for a folder that is not a
run's or a sweep's output dir.
"""

from __future__ import annotations

import argparse
import os
import sys

from mnist_np.experiment.sweep.sync import sync_paths
from mnist_np.tracking.sync import SyncError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="output dirs of runs or sweeps")
    parser.add_argument("--tracking-uri", default=None, help="sync into this store instead of each run's own")
    args = parser.parse_args(argv)
    # Our one line per run is the output; MLflow would add "View run at" links (its bars are off: tracking.console).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from mnist_np.common.errors import error_line
    from mnist_np.tracking.uris import TrackingUnavailable

    try:
        for line in sync_paths(args.dirs, args.tracking_uri):
            print(line, flush=True)
    except SyncError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrackingUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # e.g. the server went away mid-sync: what was sent is not sent again
        print(f"error: the sync stopped ({error_line(e)}); run it again to send the rest", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
