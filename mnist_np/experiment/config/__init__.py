"""The config: its schemas, the command line checked, composition, validation, and the core objects built from it.

The bottom of the experiment layers: it imports none of run, sweep or search.

- :mod:`~mnist_np.experiment.config.builders`: A validated config -> the numeric core's objects: data splits, random
  streams, model, optimizer, schedule, settings.
- :mod:`~mnist_np.experiment.config.compose`: Configs composed as ``scripts/train.py`` composes them, the command line
  checked first, and saved configs read back.
- :mod:`~mnist_np.experiment.config.overrides`: The command line, read with Hydra's own parsers and checked key by key
  before anything is composed.
- :mod:`~mnist_np.experiment.config.schema`: The config's schemas: dataclasses Hydra type-checks every composed config
  against.
- :mod:`~mnist_np.experiment.config.validation`: Value checks on a composed config, before anything is created on disk
  or in MLflow.
"""
