"""batch_norm as one tape node. The math (the paper's Algorithm 1 and its backward)
lives in the kernels: kernels/reference/batchnorm.py is the readable version. This
layer chooses batch or running statistics and updates the running ones."""
from __future__ import annotations

import numpy as np

from ..autograd import no_grad, record
from ..backend import backend_for
from ..tensor import Tensor
from ._kernel_args import channel_columns, check_float
from ._util import ShapeError


def _update_running_stats(running_mean, running_var, mean, var, m, momentum):
    """running = (1 - momentum) * running + momentum * batch, with the unbiased
    variance m/(m-1) var for running_var (as in the paper's Algorithm 2 and PyTorch)."""
    with no_grad():
        rm, rv = running_mean.data, running_var.data
        rm *= 1 - momentum
        rm += momentum * mean.astype(rm.dtype, copy=False)
        rv *= 1 - momentum
        rv += (momentum * m / (m - 1)) * var.astype(rv.dtype, copy=False)


def batch_norm(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalization over (N, C) or (N, C, H, W), statistics per channel C.

    training=True normalizes with the batch's mean and biased variance and updates the
    running statistics in place; training=False uses the running statistics. Without
    running statistics (None) the batch's are used in both modes, as in PyTorch."""
    return _batch_norm("batch_norm", x, running_mean, running_var, weight, bias, training,
                       momentum, eps, relu=False)


def batch_norm_relu(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                    weight: Tensor | None = None, bias: Tensor | None = None,
                    training: bool = False, momentum: float = 0.1,
                    eps: float = 1e-5) -> Tensor:
    """relu(batch_norm(x, ...)) as one tape node (a minidl extension; PyTorch has no
    such function): the same values and gradients, bitwise, with one pass over memory
    fewer forward (the ReLU is applied as batch norm writes its output) and one op fewer
    on the tape. nn.Sequential runs a BatchNorm followed by a ReLU through it.

    >>> import minidl as md
    >>> x = md.tensor([[-1.0], [0.0], [1.0]])
    >>> batch_norm_relu(x, None, None).data.ravel().round(4).tolist()
    [0.0, 0.0, 1.2247]
    """
    return _batch_norm("batch_norm_relu", x, running_mean, running_var, weight, bias,
                       training, momentum, eps, relu=True)


def _batch_norm(op, x, running_mean, running_var, weight, bias, training, momentum, eps,
                relu):
    if x.ndim not in (2, 4):
        raise ShapeError(f"{op}: expected input of shape (N, C) or (N, C, H, W), got {x.shape}")
    c = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (c,):
            raise ShapeError(f"{op}: {name} has shape {t.shape} but the input {x.shape} has "
                             f"{c} channels")
    dtype = check_float(op, input=x.data, weight=None if weight is None else weight.data,
                        bias=None if bias is None else bias.data)
    use_batch_stats = training or running_mean is None or running_var is None
    m = x.data.size // max(c, 1)
    if training and m < 2:
        raise ValueError(f"{op}: expected more than 1 value per channel when training, got "
                         f"input of shape {x.shape}")

    K = backend_for(x)
    to_kernel, from_kernel = channel_columns(x.data)  # channels_last: (N*H*W, C) rows
    xd = to_kernel(x.data)
    gamma = weight.data if weight is not None else np.ones(c, dtype)
    beta = bias.data if bias is not None else np.zeros(c, dtype)
    # With a fused ReLU the backward masks g by the output (relu_out): kept in the
    # kernel's layout, as x is.
    if use_batch_stats:
        yd, mean, var = K.batch_norm_train_forward(xd, gamma, beta, eps, relu=relu)
        if training and running_mean is not None and running_var is not None:
            _update_running_stats(running_mean, running_var, mean, var, m, momentum)

        def grads(g):
            return K.batch_norm_train_backward(g, xd, gamma, mean, var, eps,
                                               relu_out=yd if relu else None)
    else:
        rm = running_mean.data.astype(dtype, copy=False)
        rv = running_var.data.astype(dtype, copy=False)
        yd = K.batch_norm_eval_forward(xd, gamma, beta, rm, rv, eps, relu=relu)

        def grads(g):
            return K.batch_norm_eval_backward(g, xd, gamma, rm, rv, eps,
                                              relu_out=yd if relu else None)
    out = from_kernel(yd)

    parents = tuple(t for t in (x, weight, bias) if t is not None)

    def backward(g, needs):
        # One kernel pass gives all three: dgamma and dbeta are the per-channel sums
        # that dx is built from anyway.
        dx, dgamma, dbeta = grads(to_kernel(g))
        out_grads = [from_kernel(dx)]
        if weight is not None:
            out_grads.append(dgamma)
        if bias is not None:
            out_grads.append(dbeta)
        return tuple(out_grads)
    return record(out, parents, backward, "BatchNormReLU" if relu else "BatchNorm")
