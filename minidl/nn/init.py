"""Weight initializers with PyTorch's names and formulas. Each fills a tensor in place,
drawing from minidl's global generator (so `minidl.manual_seed` makes them repeatable)
unless a `generator` is given, and returns the tensor. They write `.data` directly, so
nothing is recorded on the tape.
"""
from __future__ import annotations

import math

import numpy as np

from ..random import default_generator
from ..tensor import Tensor

__all__ = ["calculate_gain", "uniform_", "normal_", "constant_", "zeros_", "ones_",
           "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_"]


def _array(tensor) -> np.ndarray:
    arr = tensor.data if isinstance(tensor, Tensor) else tensor
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"init: expected a minidl Tensor or ndarray, got {type(tensor).__name__}")
    return arr


def _uniform(arr: np.ndarray, a: float, b: float, generator) -> None:
    gen = generator or default_generator()
    if arr.dtype.kind != "f":
        raise TypeError(f"init: cannot fill a {arr.dtype} tensor with random floats")
    # Generator.random draws float32 directly: no float64 temporary for float32 weights.
    arr[...] = gen.random(arr.shape, dtype=arr.dtype.type) * (b - a) + a


def _normal(arr: np.ndarray, mean: float, std: float, generator) -> None:
    gen = generator or default_generator()
    if arr.dtype.kind != "f":
        raise TypeError(f"init: cannot fill a {arr.dtype} tensor with random floats")
    arr[...] = gen.standard_normal(arr.shape, dtype=arr.dtype.type) * std + mean


def calculate_gain(nonlinearity: str, param=None) -> float:
    """The gain that keeps activations' variance steady through `nonlinearity`."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"calculate_gain: negative_slope {param!r} is not a number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def _calculate_fan_in_and_fan_out(arr: np.ndarray):
    if arr.ndim < 2:
        raise ValueError(f"init: fan in and fan out need a tensor with at least 2 dims, got "
                         f"shape {arr.shape}")
    # (out, in, *kernel): every kernel position is one more input (fan_in) and one more
    # output (fan_out) connection.
    receptive = int(np.prod(arr.shape[2:])) if arr.ndim > 2 else 1
    return arr.shape[1] * receptive, arr.shape[0] * receptive


def _fan(arr: np.ndarray, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"init: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(arr)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor, a: float = 0.0, b: float = 1.0, generator=None):
    _uniform(_array(tensor), a, b, generator)
    return tensor


def normal_(tensor, mean: float = 0.0, std: float = 1.0, generator=None):
    _normal(_array(tensor), mean, std, generator)
    return tensor


def constant_(tensor, val: float):
    _array(tensor)[...] = val
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0)


def ones_(tensor):
    return constant_(tensor, 1)


def xavier_uniform_(tensor, gain: float = 1.0, generator=None):
    """Glorot & Bengio: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    arr = _array(tensor)
    fan_in, fan_out = _calculate_fan_in_and_fan_out(arr)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    _uniform(arr, -bound, bound, generator)
    return tensor


def xavier_normal_(tensor, gain: float = 1.0, generator=None):
    """Glorot & Bengio: N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    arr = _array(tensor)
    fan_in, fan_out = _calculate_fan_in_and_fan_out(arr)
    _normal(arr, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)
    return tensor


def kaiming_uniform_(tensor, a: float = 0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu", generator=None):
    """He et al.: U(-b, b) with b = gain * sqrt(3 / fan). With a = sqrt(5) (the default
    of Linear and Conv2d) this is U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    arr = _array(tensor)
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(arr, mode))
    bound = math.sqrt(3.0) * std
    _uniform(arr, -bound, bound, generator)
    return tensor


def kaiming_normal_(tensor, a: float = 0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", generator=None):
    """He et al.: N(0, std^2) with std = gain / sqrt(fan)."""
    arr = _array(tensor)
    _normal(arr, 0.0, calculate_gain(nonlinearity, a) / math.sqrt(_fan(arr, mode)), generator)
    return tensor


def default_layer_init_(weight, bias=None):
    """PyTorch's default init of Linear and Conv2d: kaiming_uniform_(a=sqrt(5)) for the
    weight, which is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias
    (fan_in = in_features, or in_channels / groups * kH * kW)."""
    kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in = _array(weight)[0].size
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        uniform_(bias, -bound, bound)
    return weight
