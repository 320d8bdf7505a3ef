"""Plain helpers that every layer may use: atomic files, processes, one-line errors, the project's paths.

Standard library only, so that importing them never drags in NumPy,
Hydra or MLflow.

- :mod:`~mnist_np.common.cores`: The cores a process may really use: the affinity mask, a cgroup CPU quota, the
  scheduler's figure.
- :mod:`~mnist_np.common.errors`: Errors as one line: what a log line, an MLflow tag or a terminal shows.
- :mod:`~mnist_np.common.files`: Atomic file writes: a reader, or a crash, never meets half a file.
- :mod:`~mnist_np.common.forking`: The one ``fork`` of the package: made while the process has one thread.
- :mod:`~mnist_np.common.locks`: One writer per run: an operating-system lock on a run's (or a sweep's) output dir while
  a process works in it.
- :mod:`~mnist_np.common.paths`: Where the project lives: every default location is built from :data:`PROJECT_ROOT`,
  never from the working directory.
- :mod:`~mnist_np.common.procs`: Processes: which one owns a run, whether it still exists, and whether this one may
  fork.
- :mod:`~mnist_np.common.waits`: Waits between forked processes: spin for microseconds, then sleep until woken.
"""
