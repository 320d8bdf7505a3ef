"""The guided search: Optuna behind Hydra's sweeper interface, its members reporting to their trials.

The top of the experiment layers: imports sweep, run and config; so what covers any
``--multirun`` (a member, a dry run) lives here too.

- :mod:`~mnist_np.experiment.search.dry_run`: A dry run (``dry_run=true``): what a command of ``scripts/train.py`` would
  launch, every member checked, nothing created.
- :mod:`~mnist_np.experiment.search.member`: A member of any ``--multirun``, as ``scripts/train.py`` runs it: the
  sweep's member, plus a search's trial.
- :mod:`~mnist_np.experiment.search.outcome`: How a search's trials end: told to the study from their members' output
  dirs, whatever launcher ran them.
- :mod:`~mnist_np.experiment.search.source`: A guided search's trials, asked one at a time by workers at their own pace:
  Optuna's ask-and-tell over its storage.
- :mod:`~mnist_np.experiment.search.space`: A guided search's space, written as Hydra overrides, turned into Optuna
  distributions.
- :mod:`~mnist_np.experiment.search.study`: A guided search's Optuna study: its settings, storage, sampler and pruner,
  all picked by name.
- :mod:`~mnist_np.experiment.search.sweeper`: A guided search as a Hydra sweeper: Optuna (>= 4.7) asks, Hydra's launcher
  runs the batch, Optuna is told.
- :mod:`~mnist_np.experiment.search.trial`: A search member's side of its trial: its validation metric reported after
  every epoch, and pruning.
"""
