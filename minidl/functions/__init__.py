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
    normalization.py batch_norm                 (backend kernels: kernels/*/batchnorm.py)
    pooling.py     max_pool2d avg_pool2d adaptive_avg_pool2d  (kernels/*/pooling.py)

This module also binds the operators and methods of `Tensor` to these functions.
"""
from ..tensor import Tensor
from ._util import ShapeError
from .conv import conv2d
from .dropout import dropout
from .normalization import batch_norm
from .pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from .activation import log_softmax, relu, sigmoid, softmax, tanh
from .linalg import linear, matmul
from .loss import cross_entropy, mse_loss
from .math import (abs, add, cast, clip, div, eq, exp, ge, gt, le, log, lt, maximum, minimum,
                   mul, ne, neg, pow, sqrt, sub, where)
from .reduction import argmax, max, mean, min, sum, var
from .shape import (cat, concatenate, flatten, getitem, pad, permute, reshape, squeeze, stack,
                    transpose, unsqueeze)


def _swap(f):
    return lambda a, b: f(b, a)


_METHODS = {
    "__add__": add, "__radd__": _swap(add), "__sub__": sub, "__rsub__": _swap(sub),
    "__mul__": mul, "__rmul__": _swap(mul), "__truediv__": div, "__rtruediv__": _swap(div),
    "__pow__": pow, "__rpow__": _swap(pow), "__matmul__": matmul, "__rmatmul__": _swap(matmul),
    "__neg__": neg, "__abs__": abs, "__getitem__": getitem,
    "__eq__": eq, "__ne__": ne, "__lt__": lt, "__le__": le, "__gt__": gt, "__ge__": ge,
    "exp": exp, "log": log, "sqrt": sqrt, "abs": abs, "clip": clip, "clamp": clip,
    "sum": sum, "mean": mean, "var": var, "max": max, "min": min, "argmax": argmax,
    "reshape": reshape, "view": reshape, "flatten": flatten, "permute": permute,
    "transpose": transpose, "squeeze": squeeze, "unsqueeze": unsqueeze,
    "relu": relu, "sigmoid": sigmoid, "tanh": tanh, "softmax": softmax,
    "log_softmax": log_softmax, "matmul": matmul, "maximum": maximum, "pow": pow,
}
for _name, _fn in _METHODS.items():
    setattr(Tensor, _name, _fn)
Tensor.T = property(lambda self: transpose(self, -2, -1) if self.ndim >= 2 else self)
