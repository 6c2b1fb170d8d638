"""CIFAR-10 from the "python version" batches (cifar-10-python.tar.gz, extracted).

The batches are pickled dicts - that is the format's only form - so they are read
with pickle. Unpickling can run arbitrary code: only load files from a trusted
source (https://www.cs.toronto.edu/~kriz/cifar.html).
"""

import os
import pickle

import numpy as np

from .dataset import TensorDataset
from .idx import DataFormatError
from .datasets import DatasetNotFoundError

__all__ = ["cifar10", "CIFAR10_DIRNAME"]

CIFAR10_DIRNAME = "cifar-10-batches-py"
_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
_TEST_BATCHES = ["test_batch"]
_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def _search_dirs(root):
    bases = []
    if root is not None:
        bases.append(os.fspath(root))
    if os.environ.get("MINIDL_DATA"):
        bases.append(os.environ["MINIDL_DATA"])
    bases.append(os.path.join(os.path.expanduser("~"), ".cache", "minidl"))
    # Accept the batches directory itself as well as its parent.
    return [d for b in bases for d in (os.path.join(b, CIFAR10_DIRNAME), b)]


def _read_batch(path):
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the batches were pickled by Python 2; keys come back as bytes.
            batch = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DataFormatError(f"{path}: not a readable CIFAR-10 batch ({e})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataFormatError(f"{path}: not a CIFAR-10 batch (expected a dict with "
                              f"b'data' and b'labels')")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataFormatError(f"{path}: data should be uint8 of shape (n, 3072), got "
                              f"{data.dtype} {data.shape}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataFormatError(f"{path}: {data.shape[0]} images but labels of shape "
                              f"{labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataFormatError(f"{path}: labels must lie in 0..9, found "
                              f"{labels.min()}..{labels.max()}")
    return data, labels


def cifar10(root=None, train=True):
    """CIFAR-10 as a TensorDataset: images float32 (N, 3, 32, 32) in [0, 1], labels int64.

    Looks for `cifar-10-batches-py/` (data_batch_1..5, test_batch) in `root`,
    $MINIDL_DATA and ~/.cache/minidl, in that order. There is no download.
    """
    names = _TRAIN_BATCHES if train else _TEST_BATCHES
    dirs = _search_dirs(root)
    for d in dirs:
        if all(os.path.isfile(os.path.join(d, n)) for n in names):
            break
    else:
        searched = "\n".join(f"  {d}" for d in dirs)
        raise DatasetNotFoundError(
            f"CIFAR-10 {'training' if train else 'test'} batches ({', '.join(names)}) "
            f"not found. Searched, in order:\n{searched}\nTo fix this, download {_URL}, "
            f"and extract it into {os.path.dirname(dirs[0])}{os.sep} so that "
            f"{dirs[0]}{os.sep}{names[0]} exists (or pass root=... or set MINIDL_DATA).")
    parts = [_read_batch(os.path.join(d, n)) for n in names]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    x = np.divide(data.reshape(-1, 3, 32, 32), np.float32(255), dtype=np.float32)
    return TensorDataset(x, labels)
