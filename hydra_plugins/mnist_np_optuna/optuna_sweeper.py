"""The class Hydra instantiates for ``hydra/sweeper=mnist_np_optuna``.

Hydra accepts plugins only from the ``hydra_plugins`` namespace package;
the sweeper's code is :mod:`mnist_np.experiment.search.sweeper`.
"""

from mnist_np.experiment.search import sweeper as search_sweeper


class OptunaSweeper(search_sweeper.SearchSweeperImpl):
    """Optuna (>= 4.7) behind Hydra's sweeper interface: see :mod:`mnist_np.experiment.search.sweeper`."""
