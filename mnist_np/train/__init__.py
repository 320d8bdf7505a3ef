"""Training: the mini-batch loop with its callbacks, one training step on one core or several, checkpoints.

Plain values in, plain values out: nothing here knows about configs,
Hydra or MLflow (tracking plugs in as a :class:`~mnist_np.train.loop.Callback`).
"""
