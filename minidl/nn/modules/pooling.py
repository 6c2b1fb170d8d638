"""Pooling layers (NCHW), PyTorch's MaxPool2d, AvgPool2d and AdaptiveAvgPool2d."""
from __future__ import annotations

from .. import functional as F
from ..module import Module
from .conv import _pair


def _check_window(owner: str, kernel_size, stride, padding) -> None:
    """PyTorch's rules, checked when the layer is built: kernel and stride >= 1,
    0 <= padding <= kernel // 2 (a window must overlap the input)."""
    k = _pair(kernel_size, "kernel_size", 1, owner)
    if stride is not None:
        _pair(stride, "stride", 1, owner)
    p = _pair(padding, "padding", 0, owner)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{owner}: padding must be at most half the kernel size, got "
                         f"padding={padding!r} for kernel_size={kernel_size!r}")


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1,
                 return_indices: bool = False, ceil_mode: bool = False):
        super().__init__()
        if dilation not in (1, (1, 1)):
            raise NotImplementedError(f"MaxPool2d: dilation={dilation!r} is not supported")
        if return_indices:
            raise NotImplementedError("MaxPool2d: return_indices=True is not supported")
        _check_window("MaxPool2d", kernel_size, stride, padding)
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override=None):
        super().__init__()
        if divisor_override is not None:
            raise NotImplementedError("AvgPool2d: divisor_override is not supported")
        _check_window("AvgPool2d", kernel_size, stride, padding)
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad
        self.divisor_override = divisor_override

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Global average pooling: only output_size=1 (or (1, 1)) is supported."""

    def __init__(self, output_size=1):
        super().__init__()
        if output_size not in (1, (1, 1), [1, 1]):
            raise NotImplementedError(f"AdaptiveAvgPool2d: only output_size=1 is supported, "
                                      f"got {output_size!r}")
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
