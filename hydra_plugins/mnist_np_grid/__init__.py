"""mnist-np's grid sweeper as a Hydra sweeper plugin (``hydra/sweeper=mnist_np_grid``, the project's default)."""
