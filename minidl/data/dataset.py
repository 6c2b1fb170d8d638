"""Map-style datasets, as in PyTorch: `dataset[i]` and `len(dataset)`."""

import numpy as np

__all__ = ["Dataset", "TensorDataset", "as_array"]


def as_array(x):
    """The ndarray behind `x`: minidl Tensors are unwrapped, anything else is
    converted with np.asarray (no copy when it already is an ndarray)."""
    data = getattr(x, "data", None)
    if isinstance(data, np.ndarray) and not isinstance(x, np.ndarray):
        return data
    return np.asarray(x)


class Dataset:
    """Base class: subclasses implement `__getitem__(i)` and `__len__()`.

    A dataset whose samples are rows of whole arrays may also expose them as
    `arrays` (a tuple of ndarrays sharing their first dimension); the DataLoader
    then gathers a batch with one fancy-index per array instead of collating
    samples one by one.
    """

    def __getitem__(self, index):
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError


class TensorDataset(Dataset):
    """Samples are the i-th rows of each given array (or minidl Tensor)."""

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("TensorDataset needs at least one array")
        arrays = tuple(as_array(a) for a in arrays)
        for a in arrays:
            if a.ndim == 0:
                raise ValueError("TensorDataset arrays need a first (sample) dimension, "
                                 "got a 0-d array")
        if len({a.shape[0] for a in arrays}) != 1:
            shapes = ", ".join(str(a.shape) for a in arrays)
            raise ValueError(f"TensorDataset arrays must have the same first dimension; "
                             f"got shapes {shapes}")
        self.arrays = arrays

    def __getitem__(self, index):
        return tuple(a[index] for a in self.arrays)

    def __len__(self):
        return self.arrays[0].shape[0]

    def __repr__(self):
        shapes = ", ".join(f"{a.shape} {a.dtype}" for a in self.arrays)
        return f"TensorDataset({shapes})"
