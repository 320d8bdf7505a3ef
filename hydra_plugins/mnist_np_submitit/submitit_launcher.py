"""The classes Hydra instantiates for ``hydra/launcher=mnist_np_submitit_slurm`` and ``mnist_np_submitit_local``.

Hydra accepts plugins only from the ``hydra_plugins`` namespace package;
the launchers' code is :mod:`mnist_np.experiment.sweep.submitit`. Hydra
imports every plugin module when it starts, so nothing is defined here
where Hydra's submitit launcher is not installed (the ``sweeps`` extra).
"""

try:
    from mnist_np.experiment.sweep.submitit import WaitingLocalLauncher, WaitingSlurmLauncher
except ImportError:  # no hydra-submitit-launcher: these launchers do not exist
    pass
else:

    class SlurmLauncher(WaitingSlurmLauncher):
        """Hydra's submitit Slurm launcher that waits for every job: see :mod:`mnist_np.experiment.sweep.submitit`."""

    class LocalLauncher(WaitingLocalLauncher):
        """Hydra's submitit local launcher that waits for every job: see :mod:`mnist_np.experiment.sweep.submitit`."""
