"""The network and how it learns, in NumPy only: activations, initializers, losses, the MLP, optimizers, schedules, metrics.

Nothing here knows about configs, files of runs, Hydra or MLflow: every
class takes plain values. Shapes: a batch is ``(N, features)``; a dense
layer holds ``W: (in, out)`` and ``b: (out,)``, so the forward pass is
``X @ W + b`` with no transposes.
"""
