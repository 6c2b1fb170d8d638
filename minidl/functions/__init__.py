"""Differentiable functions: the tape's vocabulary. Stateless; layers with parameters
live in `minidl.nn`. Each op sits next to its backward in one of these files:

    math.py        add sub mul div neg pow exp log sqrt abs maximum minimum where clip cast
    linalg.py      matmul linear
    reduction.py   sum mean var max min argmax
    shape.py       reshape flatten permute transpose squeeze unsqueeze getitem
                   concatenate stack pad
    activation.py  relu sigmoid tanh softmax log_softmax
    loss.py        cross_entropy mse_loss
    dropout.py     dropout
    conv.py        conv2d                       (backend kernels: kernels/*/conv2d.py)
    normalization.py batch_norm, batch_norm_relu (backend kernels: kernels/*/batchnorm.py)
    pooling.py     max_pool2d avg_pool2d adaptive_avg_pool2d  (kernels/*/pooling.py)

Tensor's operators and methods (`a + b`, `x.sum()`) are declared in minidl/tensor.py
and call these functions through the module reference bound at the end of this file.
"""
import sys as _sys

from .. import tensor as _tensor_module
from ._util import ShapeError
from .conv import conv2d
from .dropout import dropout
from .normalization import batch_norm, batch_norm_relu
from .pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from .activation import log_softmax, relu, sigmoid, softmax, tanh
from .linalg import linear, matmul
from .loss import cross_entropy, mse_loss
from .math import (abs, add, cast, clip, div, eq, exp, ge, gt, le, log, lt, maximum, minimum,
                   mul, ne, neg, pow, sqrt, sub, where)
from .reduction import argmax, max, mean, min, sum, var
from .shape import (cat, concatenate, flatten, getitem, pad, permute, reshape, squeeze, stack,
                    to_memory_format, transpose, unsqueeze)


# Tensor's operators and methods (declared in minidl/tensor.py) call these functions.
_tensor_module.F = _sys.modules[__name__]
