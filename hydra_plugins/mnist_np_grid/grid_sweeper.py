"""The class Hydra instantiates for ``hydra/sweeper=mnist_np_grid``.

Hydra accepts plugins only from the ``hydra_plugins`` namespace package;
the sweeper's code is :mod:`mnist_np.experiment.sweep.grid`.
"""

from mnist_np.experiment.sweep import grid as sweep_grid


class GridSweeper(sweep_grid.GridSweeperImpl):
    """Hydra's basic grid sweep, in which every member leaves a record: see :mod:`mnist_np.experiment.sweep.grid`."""
