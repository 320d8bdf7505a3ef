"""From a Hydra config to a tracked run, and from runs to sweeps: the only part of the package that imports Hydra.

- :mod:`~mnist_np.experiment.schema`: the config's dataclass schemas (one source of every default), registered with Hydra.
- :mod:`~mnist_np.experiment.overrides`: the command line checked before Hydra composes it.
- :mod:`~mnist_np.experiment.compose`: composing configs, and reading a run's saved config back.
- :mod:`~mnist_np.experiment.validation`: value checks on a composed config.
- :mod:`~mnist_np.experiment.builders`: config -> data, model, optimizer, schedule, settings.
- :mod:`~mnist_np.experiment.context`: what Hydra tells a job about itself.
- :mod:`~mnist_np.experiment.provenance`: versions, threads and git state recorded with a run.
- :mod:`~mnist_np.experiment.outputs`: a run's files (config, per-epoch metrics, log).
- :mod:`~mnist_np.experiment.run`: one tracked training run; :mod:`~mnist_np.experiment.resume`: continuing one.
- :mod:`~mnist_np.experiment.sweep`, :mod:`~mnist_np.experiment.sweep_summary`, :mod:`~mnist_np.experiment.sweep_sync`:
  ``--multirun`` as one MLflow parent run, its summary, and syncing it.
- :mod:`~mnist_np.experiment.tables`: sorted tables of runs; :mod:`~mnist_np.experiment.reproduce`: bit-for-bit checks.
"""
