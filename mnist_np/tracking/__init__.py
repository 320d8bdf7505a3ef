"""MLflow, and only here: the rest of the package never imports it.

- :mod:`~mnist_np.tracking.console`: what MLflow prints on a run's console: only warnings, unless the user asks for
  more.
- :mod:`~mnist_np.tracking.uris`: which store a URI names, and whether a server answers (no MLflow import).
- :mod:`~mnist_np.tracking.client`: a client for a store, experiments, batched calls, refusals in one line.
- :mod:`~mnist_np.tracking.conventions`: this project's tag names and MLflow's limits.
- :mod:`~mnist_np.tracking.journal`: every call a run makes, written to its output dir first.
- :mod:`~mnist_np.tracking.tracker`: :class:`MlflowTracker`, one run's journaled, fail-soft writes and the training
  callback.
- :mod:`~mnist_np.tracking.runs`: administration of runs the tracker does not own (closing dead runs, replays).
- :mod:`~mnist_np.tracking.queries`: reads (runs, histories, artifacts, children of a sweep).
- :mod:`~mnist_np.tracking.logged_model`: the weights as an MLflow pyfunc model; weights by run id.
- :mod:`~mnist_np.tracking.pyfunc_model`: the model's own code, copied into every logged model.
- :mod:`~mnist_np.tracking.sync`: upload what one run's output dir holds and MLflow misses.
- :mod:`~mnist_np.tracking.registry`: The Model Registry: a run's logged model as a new version of a registered model,
  and the alias ``champion``.
- :mod:`~mnist_np.tracking.system_metrics`: CPU, memory, disk and network use over a run's training, by MLflow's own
  system-metrics monitor (psutil).
"""

# First, before any module here imports MLflow: its console switches (see mnist_np.tracking.console).
from mnist_np.tracking import console  # noqa: E402, F401
