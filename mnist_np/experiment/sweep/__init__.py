"""``--multirun`` sweeps: one MLflow parent run, every member a child that leaves a record, resumable.

Imports run and config; never search.

- :mod:`~mnist_np.experiment.sweep.grid`: A grid sweep (``a=1,2 b=x,y``) as Hydra's basic sweeper runs it, except that a
  failed launch never loses a member.
- :mod:`~mnist_np.experiment.sweep.importance`: Which swept parameters mattered: Optuna's PED-ANOVA importance over a
  sweep's finished members.
- :mod:`~mnist_np.experiment.sweep.info`: What identifies a ``--multirun`` sweep: its ``mlflow_sweep.json``, what it
  sweeps, and the names of its runs.
- :mod:`~mnist_np.experiment.sweep.launch`: A sweep's launches, in the sweep's process: every member of a launch ends
  with a record, even when the launch fails.
- :mod:`~mnist_np.experiment.sweep.ledger`: A grid's members as a ledger in the sweep dir, taken one at a time by
  workers on any node (a packed sweep).
- :mod:`~mnist_np.experiment.sweep.members`: A sweep member, in its own process: the run, handed what the sweep says of
  it, and its record whatever stops it.
- :mod:`~mnist_np.experiment.sweep.parent`: A sweep's parent run in MLflow: opened before any member starts, reopened
  when the sweep is continued.
- :mod:`~mnist_np.experiment.sweep.records`: A sweep member's record, read and written from its own output dir: how it
  fared, and its FAILED child when it failed.
- :mod:`~mnist_np.experiment.sweep.resume`: Continuing a killed sweep: ``python scripts/train.py --multirun
  resume=<sweep dir | parent run id>``.
- :mod:`~mnist_np.experiment.sweep.seed_groups`: Seed groups: members that differ only in ``seed``, aggregated (n, mean
  ± standard deviation), best group first.
- :mod:`~mnist_np.experiment.sweep.session`: ``--multirun`` sweeps in MLflow: one parent run per sweep, every member a
  child.
- :mod:`~mnist_np.experiment.sweep.submitit`: Hydra's submitit launchers, except that a failed job never makes the sweep
  abandon the others.
- :mod:`~mnist_np.experiment.sweep.summary`: A sweep's outcome on its parent run: counts, the best member on validation,
  a sorted table, seed groups, importance, plots.
- :mod:`~mnist_np.experiment.sweep.sync`: Sync a sweep's dir into MLflow: every member's run, then the parent's summary
  (``scripts/sync.py <sweep dir>``).
- :mod:`~mnist_np.experiment.sweep.workers`: Workers that each take their next job the moment their last one ends: no
  batch waits for its slowest member.
"""
