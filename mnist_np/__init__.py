"""mnist-np: pure-NumPy neural networks on MNIST, configured with Hydra, tracked in MLflow.

The numeric core (``data``, ``layers``, ``model``, ``losses``, ``optim``,
``training``, ``checkpoint``) imports neither Hydra nor MLflow; ``config``,
``runner`` and ``tracking`` are the adapters around it.
"""

__version__ = "0.1.0"
