"""The network and how it learns, in NumPy only: activations, initializers, losses, the MLP, optimizers, schedules,
metrics.

Nothing here knows about configs, files of runs, Hydra or MLflow: every
class takes plain values. Shapes: a batch is ``(N, features)``; a dense
layer holds ``W: (in, out)`` and ``b: (out,)``, so the forward pass is
``X @ W + b`` with no transposes.

- :mod:`~mnist_np.nn.activations`: Elementwise nonlinearities with hand-written derivatives.
- :mod:`~mnist_np.nn.dropout`: Inverted dropout: masks drawn for a whole batch, applied to hidden activations while
  training.
- :mod:`~mnist_np.nn.initializers`: Initial weights: ``init(rng, fan_in, fan_out, scale) -> W: (fan_in, fan_out)``
  float64.
- :mod:`~mnist_np.nn.losses`: Softmax and cross-entropy, fused.
- :mod:`~mnist_np.nn.metrics`: Scores of a network on labelled data: mean cross-entropy, accuracy, confusion counts.
- :mod:`~mnist_np.nn.model`: The network: a multi-layer perceptron as a stack of dense layers.
- :mod:`~mnist_np.nn.optim`: Optimizers: SGD (with momentum, Nesterov) and Adam/AdamW, updating parameters from
  gradients.
- :mod:`~mnist_np.nn.registry`: Short names -> components: the one place where a name in a config becomes an object.
- :mod:`~mnist_np.nn.schedules`: Learning-rate schedules: the learning rate as a function of training progress, in
  epochs.
- :mod:`~mnist_np.nn.weights`: Weights on disk: ``.npz`` files of plain arrays that load with ``allow_pickle=False``.
"""
