"""`Parameter`: a Tensor that a Module registers as learnable when it is assigned as an
attribute. It adds no state of its own; the subclass is a tag."""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor


class Parameter(Tensor):
    __slots__ = ()

    def __init__(self, data=None, requires_grad: bool = True):
        if data is None:
            data = np.empty(0, dtype=np.float32)
        if isinstance(data, Tensor):
            # Share the array, like torch.nn.Parameter(t): the parameter *is* that data.
            arr = data.data
        else:
            arr = np.asarray(data)
            # Lists, Python floats and integer data become float32 (PyTorch's default);
            # a float32/float64 ndarray keeps its dtype.
            if not (isinstance(data, np.ndarray) and arr.dtype in (np.float32, np.float64)):
                arr = arr.astype(np.float32)
        if arr.dtype.kind != "f":
            arr = arr.astype(np.float32)
        super().__init__(arr, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()
