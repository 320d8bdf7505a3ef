"""mnist-np's guided search as a Hydra sweeper plugin (``hydra/sweeper=mnist_np_optuna``, used by ``+sweep=optuna``)."""
