"""Training: the mini-batch loop with its callbacks, one training step on one core or several, checkpoints.

Plain values in, plain values out: nothing here knows about configs,
Hydra or MLflow (tracking plugs in as a :class:`~mnist_np.train.loop.Callback`).

- :mod:`~mnist_np.train.augmented`: Augmented training pixels, epoch by epoch: the next epoch's images prepared while
  this one trains.
- :mod:`~mnist_np.train.checkpoint`: Full training state on disk, for resuming an interrupted run bit for bit.
- :mod:`~mnist_np.train.forked`: Worker processes forked by the training loop: shared memory, how they start, report
  failure and end.
- :mod:`~mnist_np.train.loop`: The training loop: mini-batch gradient descent with events for callbacks.
- :mod:`~mnist_np.train.pace`: When a sharded step runs its shards in their processes, and when all of them in the
  caller.
- :mod:`~mnist_np.train.sharded`: The training step of :mod:`mnist_np.train.stepper`, split over several cores as shard
  processes.
- :mod:`~mnist_np.train.stepper`: One training step -- a mini-batch's gradients, then the update -- in this process.
"""
