"""mnist-np: pure-NumPy neural networks on MNIST, configured with Hydra, tracked in MLflow.

Layers, each a folder, importing one way (``tests/test_architecture.py``
checks): ``common`` -> ``nn``, ``data`` -> ``train`` -> ``tracking`` ->
``experiment``. The numeric core (``nn``, ``data``, ``train``) imports
neither Hydra nor MLflow; ``tracking`` is the only MLflow importer and
``experiment`` the only Hydra importer.
"""

__version__ = "0.1.0"
