"""Batch Normalization (Ioffe & Szegedy 2015), PyTorch's BatchNorm1d/BatchNorm2d.

In training mode the batch statistics normalize and the running statistics are updated
in place (running = (1 - momentum) * running + momentum * batch, with the unbiased batch
variance); in eval mode the running statistics normalize.
"""
from __future__ import annotations

import numpy as np

from ...functions import ShapeError
from ...tensor import Tensor
from .. import functional as F
from ..module import Module, factory_dtype
from ..parameter import Parameter


class _BatchNorm(Module):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None,
                 dtype=None, *, bias: bool = True):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        dtype = factory_dtype(device, dtype, type(self).__name__)
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=dtype))
            # bias=False (PyTorch 2.13's keyword): a learned scale without a shift.
            if bias:
                self.bias = Parameter(np.zeros(num_features, dtype=dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros(num_features, dtype=dtype)))
            self.register_buffer("running_var", Tensor(np.ones(num_features, dtype=dtype)))
            self.register_buffer("num_batches_tracked", Tensor(np.zeros((), dtype=np.int64)))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            self.weight.data[...] = 1
            if self.bias is not None:
                self.bias.data[...] = 0

    def _check_input(self, x) -> None:
        raise NotImplementedError

    def forward(self, x):
        return self._normalize(x, F.batch_norm)

    def forward_relu(self, x):
        """relu(self.forward(x)) in one fused op (F.batch_norm_relu); what nn.Sequential
        runs for this module followed by a ReLU."""
        return self._normalize(x, F.batch_norm_relu)

    def _normalize(self, x, fn):
        self._check_input(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data += 1
            if self.momentum is None:  # cumulative moving average over all batches
                factor = 1.0 / float(self.num_batches_tracked.data)
        # Without running statistics, batch statistics are used in eval mode too.
        use_batch_stats = self.training or self.running_mean is None
        return fn(x, self.running_mean, self.running_var, self.weight, self.bias,
                  use_batch_stats, factor, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Over (N, C) inputs: one mean and variance per feature, taken over the batch."""

    def _check_input(self, x) -> None:
        shape = x.shape
        if len(shape) != 2:
            raise ShapeError(f"BatchNorm1d: expected a 2-D input (N, C={self.num_features}), got "
                             f"shape {shape} (3-D (N, C, L) inputs are not supported)")
        if shape[1] != self.num_features:
            raise ShapeError(f"BatchNorm1d: input of shape {shape} has {shape[1]} features, "
                             f"but the layer was built for num_features={self.num_features}")
        if self.training and shape[0] == 1:
            raise ValueError(f"BatchNorm1d: expected more than 1 value per channel when "
                             f"training, got input of shape {shape}")


class BatchNorm2d(_BatchNorm):
    """Over (N, C, H, W) inputs: one mean and variance per channel, taken over N, H, W."""

    def _check_input(self, x) -> None:
        shape = x.shape
        if len(shape) != 4:
            raise ShapeError(f"BatchNorm2d: expected a 4-D input (N, C={self.num_features}, H, "
                             f"W), got shape {shape}")
        if shape[1] != self.num_features:
            raise ShapeError(f"BatchNorm2d: input of shape {shape} has {shape[1]} channels, "
                             f"but the layer was built for num_features={self.num_features}")
        if self.training and shape[0] * shape[2] * shape[3] == 1:
            raise ValueError(f"BatchNorm2d: expected more than 1 value per channel when "
                             f"training, got input of shape {shape}")
