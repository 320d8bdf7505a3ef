"""One tracked run: validated, locked, trained inside its MLflow run, resumed, reproduced.

Imports config only; what a sweep or a search hands a run comes through :class:`~mnist_np.experiment.run.member.Member`.

- :mod:`~mnist_np.experiment.run.context`: What Hydra tells a job about itself, and the cores a job may use.
- :mod:`~mnist_np.experiment.run.execute`: The training inside an open MLflow run -- new or resumed -- and the run
  always closed at the end.
- :mod:`~mnist_np.experiment.run.member`: What a sweep may hand a run: the one interface between a single run and the
  sweeps and searches above it.
- :mod:`~mnist_np.experiment.run.outputs`: A run's own files, beside whatever MLflow gets: its config, one line of
  metrics per epoch, its log.
- :mod:`~mnist_np.experiment.run.preemption`: A scheduler taking a member's node back: Slurm's preemption and time
  limits.
- :mod:`~mnist_np.experiment.run.provenance`: What a run records about where it ran: library versions, BLAS and its
  threads, the git commit.
- :mod:`~mnist_np.experiment.run.reproduce`: Reproduce a run from what it saved, and say whether the result is the same,
  bit for bit.
- :mod:`~mnist_np.experiment.run.results`: What a run reports back: its result, or how to continue it after Ctrl-C.
- :mod:`~mnist_np.experiment.run.resume`: Continuing an interrupted run, given its MLflow run id or its output dir:
  ``resume=<run id | dir>``.
- :mod:`~mnist_np.experiment.run.single`: ``run(cfg)``: a composed config -> a validated, tracked training run (or the
  resumption of one).
- :mod:`~mnist_np.experiment.run.tables`: Runs as tables: CSV for scripts, Markdown for the parent run, aligned text for
  a terminal.
"""
