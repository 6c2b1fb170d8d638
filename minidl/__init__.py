"""minidl: a Numba-accelerated deep-learning mini-framework with PyTorch's names."""
# ruff: noqa: E402  (the order is the point: thread and BLAS policies go into the
# environment before NumPy and Numba load, so the imports cannot all come first)
from . import _threads

_threads.apply_defaults()  # first: ranks of an MPI job share the cores (minidl/_threads.py)

from . import kernels  # noqa: F401  (first: thread and BLAS policies before NumPy and Numba load)

from . import _malloc

_malloc.tune()

from . import cuda, data, functions, nn, optim
from .cuda import device
from .autograd import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .backend import get_backend, get_num_threads, set_backend, set_num_threads
from .functions import (ShapeError, abs, add, argmax, cat, clip, concatenate, cross_entropy,
                        div, exp, flatten, log, log_softmax, matmul, max, maximum, mean, min,
                        minimum, mse_loss, mul, neg, pad, permute, pow, relu, reshape, sigmoid,
                        softmax, sqrt, squeeze, stack, sub, sum, tanh, transpose, unsqueeze,
                        var, where)
from .gradcheck import GradcheckError, gradcheck
from .layout import channels_last, contiguous_format, memory_format, preserve_format
from .serialization import load, save
from .random import get_rng_state, manual_seed, set_rng_state
from .tensor import (Tensor, arange, bool_, float32, float64, full, int32, int64, ones,
                     ones_like, rand, randn, tensor, zeros, zeros_like)

__version__ = "0.1.0"
