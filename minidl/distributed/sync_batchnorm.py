"""SyncBatchNorm: batch normalization over the global batch, across ranks.

Per-rank BN normalizes each rank's b = B/K examples with their own statistics: with K
ranks the model trains as if its batch were b, not B (and the ranks' running statistics
drift apart). SyncBatchNorm makes the statistics those of the whole global batch, the
paper's mini-batch, so K ranks compute what one process at batch B computes.

Forward, per channel c, with rank r holding n_r values of mean m_r and sum of squared
deviations M2_r (one all-gather of (n_r, m_r, M2_r), then Chan et al.'s combination,
which does not cancel like E[x^2] - E[x]^2):

    N = sum_r n_r,  mu = sum_r n_r m_r / N,  var = (sum_r M2_r + n_r (m_r - mu)^2) / N
    xhat = (x - mu) / sqrt(var + eps),   y = gamma xhat + beta

Backward, with g = dL/dy on this rank's values, the global sums
Sg = sum_all g and Sgx = sum_all g xhat (one all-reduce of 2C numbers):

    dx = gamma / sqrt(var + eps) * (g - Sg / N - xhat Sgx / N)

and dgamma = sum_local g xhat, dbeta = sum_local g: the local shares, which
DistributedDataParallel averages with the other gradients. Running statistics are
updated with mu and the unbiased N/(N-1) var, identically on every rank.

Outside an initialized group of 2+ ranks, or in eval mode, it is a BatchNorm.
"""
from __future__ import annotations

import numpy as np

from ..autograd import record
from ..backend import backend_for
from ..functions import ShapeError
from ..functions._kernel_args import channel_columns, check_float
from ..functions.normalization import _update_running_stats
from ..nn.modules.batchnorm import BatchNorm1d, BatchNorm2d, _BatchNorm
from ..tensor import Tensor
from .group import current_group


def sync_batch_norm(x: Tensor, running_mean, running_var, weight, bias, momentum: float,
                    eps: float, group) -> Tensor:
    """Training-mode batch norm of (N, C) or (N, C, H, W) `x` with the statistics of the
    union of every rank's `x` in `group` (any object with allgather and allreduce_, e.g.
    minidl.distributed.SingleProcessGroup for one process)."""
    op = "SyncBatchNorm"
    if x.ndim not in (2, 4):
        raise ShapeError(f"{op}: expected input of shape (N, C) or (N, C, H, W), got {x.shape}")
    c = x.shape[1]
    dtype = check_float(op, input=x.data, weight=None if weight is None else weight.data,
                        bias=None if bias is None else bias.data)
    to_kernel, from_kernel = channel_columns(x.data)  # as F.batch_norm does
    xd = to_kernel(x.data)
    n_local = xd.size // max(c, 1)
    K = backend_for(x)
    gamma = weight.data if weight is not None else np.ones(c, dtype)
    beta = bias.data if bias is not None else np.zeros(c, dtype)
    if n_local:  # this rank's mean and biased variance, from the (parallel) BN kernel
        _, mean_l, var_l = K.batch_norm_train_forward(xd, gamma, beta, eps)
        mean_l = np.asarray(mean_l, np.float64)
        m2_l = np.asarray(var_l, np.float64) * n_local
    else:
        mean_l = m2_l = np.zeros(c)
    stats = group.allgather(np.concatenate([[float(n_local)], mean_l, m2_l]),
                            f"{op}: all_gather of the batch statistics")
    counts, means, m2s = stats[:, :1], stats[:, 1:1 + c], stats[:, 1 + c:]
    n = float(counts.sum())
    if n < 2:
        raise ValueError(f"{op}: expected more than 1 value per channel over all ranks when "
                         f"training, got {int(n)} (input of shape {x.shape} on this rank)")
    mean = (counts * means).sum(0) / n
    var = (m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)) / n
    if running_mean is not None and running_var is not None:
        _update_running_stats(running_mean, running_var, mean, var, n, momentum)

    mean_c, var_c = mean.astype(dtype), var.astype(dtype)
    out = from_kernel(K.batch_norm_eval_forward(xd, gamma, beta, mean_c, var_c, eps))

    def backward(g, needs):
        g = to_kernel(g)
        # dx0 = gamma / sigma * g, and this rank's sums of g xhat and g.
        dx0, dgamma, dbeta = K.batch_norm_eval_backward(g, xd, gamma, mean_c, var_c, eps)
        sums = np.concatenate([dbeta, dgamma]).astype(np.float64)
        group.allreduce_(sums, what=f"{op}: all_reduce of the gradient sums")
        s_g, s_gx = sums[:c], sums[c:]
        k = -np.asarray(gamma, np.float64) / np.sqrt(var + eps) / n
        # The correction k (Sg + xhat Sgx) is affine in xhat: the eval kernel computes it.
        corr = K.batch_norm_eval_forward(xd, (k * s_gx).astype(dtype),
                                         (k * s_g).astype(dtype), mean_c, var_c, eps)
        out_grads = [from_kernel(dx0 + corr)]
        if weight is not None:
            out_grads.append(dgamma)
        if bias is not None:
            out_grads.append(dbeta)
        return tuple(out_grads)

    parents = tuple(t for t in (x, weight, bias) if t is not None)
    return record(out, parents, backward, "SyncBatchNorm")


class SyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the global batch over all ranks
    (torch.nn.SyncBatchNorm). Inputs (N, C) or (N, C, H, W); a rank's own N may be 1.

    >>> model = SyncBatchNorm.convert_sync_batchnorm(mlp(bn=True))   # then wrap in DDP
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group=None,
                 device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype)
        object.__setattr__(self, "process_group", process_group)

    def _check_input(self, x) -> None:
        shape = x.shape
        if len(shape) not in (2, 4):
            raise ShapeError(f"SyncBatchNorm: expected a 2-D (N, C) or 4-D (N, C, H, W) input "
                             f"with C={self.num_features}, got shape {shape}")
        if shape[1] != self.num_features:
            raise ShapeError(f"SyncBatchNorm: input of shape {shape} has {shape[1]} channels, "
                             f"but the layer was built for num_features={self.num_features}")

    def _group(self):
        return self.process_group if self.process_group is not None else current_group()

    def forward(self, x):
        self._check_input(x)
        group = self._group()
        if not self.training or group.size == 1:
            return super().forward(x)  # BatchNorm's own path (and its checks)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.data += 1
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked.data)
        return sync_batch_norm(x, self.running_mean, self.running_var, self.weight,
                               self.bias, factor, self.eps, group)

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """`module` with every BatchNorm1d/BatchNorm2d replaced by a SyncBatchNorm that
        shares its parameters and buffers (the module itself is changed in place and
        returned; a bare BN layer is returned converted)."""
        if isinstance(module, (BatchNorm1d, BatchNorm2d)) and not isinstance(module, cls):
            new = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, process_group)
            if module.affine:
                new.weight = module.weight
                if module.bias is None:
                    new.bias = None
                else:
                    new.bias = module.bias
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(new, name, getattr(module, name))
            new.train(module.training)
            return new
        for name, child in list(module.named_children()):
            if child is not None:
                converted = cls.convert_sync_batchnorm(child, process_group)
                if converted is not child:  # in place: a Sequential keeps its order
                    module._modules[name] = converted
                    object.__setattr__(module, name, converted)
        return module
