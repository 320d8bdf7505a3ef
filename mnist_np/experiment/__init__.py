"""From a Hydra config to a tracked run, and from runs to sweeps: the only part of the package that imports Hydra.

One folder per concern, imported one way -- search -> sweep -> run -> config
(checked by tests/test_architecture.py):

- :mod:`~mnist_np.experiment.config`: schemas, the command line, composition, validation, builders.
- :mod:`~mnist_np.experiment.run`: one run -- execute, resume, outputs, provenance, reproduce -- and what a sweep may
  hand it.
- :mod:`~mnist_np.experiment.sweep`: the parent run, its members and their records, resuming, the summary.
- :mod:`~mnist_np.experiment.search`: the Optuna sweeper: space, study, trials, pruning.
"""
