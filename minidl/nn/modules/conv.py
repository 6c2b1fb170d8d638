"""2-D convolution (NCHW), PyTorch's Conv2d."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .. import init
from ..module import Module, factory_dtype
from ..parameter import Parameter


def _pair(v, name: str, minimum: int = 0, owner: str = "Conv2d") -> tuple:
    """(a, b) from an int or a pair of ints, each >= minimum; else a ValueError naming
    the argument (raised when the layer is built, not deep in a kernel at forward)."""
    if isinstance(v, (bool, np.bool_)):
        t = None
    elif isinstance(v, (int, np.integer)):
        t = (int(v), int(v))
    else:
        try:
            t = tuple(v)
        except TypeError:
            t = None
        if t is not None and (len(t) != 2 or not all(
                isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_))
                for i in t)):
            t = None
    if t is None:
        raise ValueError(f"{owner}: {name} must be an int or a pair of ints, got {v!r}")
    t = tuple(int(i) for i in t)
    if min(t) < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {v!r}")
    return t


class Conv2d(Module):
    """weight (out_channels, in_channels // groups, kH, kW); input (N, C, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("groups", groups)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Conv2d: {name} must be a positive int, got {value!r}")
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must both be divisible by groups ({groups})")
        if padding_mode != "zeros":
            raise NotImplementedError(f"Conv2d: only padding_mode='zeros' is supported, got "
                                      f"{padding_mode!r}")
        if isinstance(padding, str):
            # 'same' would need asymmetric padding for even kernels; only 'valid' maps
            # onto the symmetric padding the kernels take.
            if padding != "valid":
                raise NotImplementedError(f"Conv2d: padding={padding!r} is not supported; "
                                          f"pass 'valid' or explicit ints")
            padding = 0
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.dilation = _pair(dilation, "dilation", 1)
        self.groups = groups
        self.padding_mode = padding_mode
        dtype = factory_dtype(device, dtype, "Conv2d")
        self.weight = Parameter(np.empty((out_channels, in_channels // groups)
                                         + self.kernel_size, dtype=dtype))
        if bias:
            self.bias = Parameter(np.empty(out_channels, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.default_layer_init_(self.weight, self.bias)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s
