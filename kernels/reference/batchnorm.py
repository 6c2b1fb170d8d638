"""Batch normalization in plain NumPy: a transcription of Ioffe & Szegedy (2015).

Statistics are per channel: over N for x of shape (N, C), over N*H*W for (N, C, H, W)
(Sec. 3.2: a feature map is normalized as a whole, so the "mini-batch" of a channel is
m = N*H*W values). This file is the oracle the Numba kernels are tested against, so it
computes in float64 throughout and rounds only its outputs to x's dtype: a float32 sum
of 10^5 values near 10^4 would otherwise lose the digits the tests check.
"""
import numpy as np

from .elementwise import act_backward, bias_act_forward


def _per_channel(x):
    """Reduction axes (all but the channel axis) and a shape that broadcasts a (C,)
    vector against x."""
    if x.ndim == 2:
        return (0,), (1, -1)
    return (0, 2, 3), (1, -1, 1, 1)


def _relu(y, relu):
    """A fused ReLU after the normalization (relu=True): the ReLU's own reference."""
    return bias_act_forward(y, None, "relu") if relu else y


def _relu_masked(dy, relu_out):
    """dy through a fused ReLU, given its output (relu_out): the ReLU's own backward."""
    return dy if relu_out is None else act_backward(dy, relu_out, "relu")


def batch_norm_train_forward(x, gamma, beta, eps, relu=False):
    """Algorithm 1 of the paper; returns (y, mean, var) with var the biased variance.
    relu=True applies max(y, 0) to the (rounded) output: BN followed by a ReLU, fused."""
    axes, shape = _per_channel(x)
    x64 = np.asarray(x, dtype=np.float64)
    # mu_B = 1/m sum_i x_i
    mean = x64.mean(axis=axes)
    # sigma_B^2 = 1/m sum_i (x_i - mu_B)^2, in a second pass over the centered values:
    # E[x^2] - E[x]^2 would cancel catastrophically when |mu_B| >> sigma_B.
    xc = x64 - mean.reshape(shape)
    var = np.mean(xc * xc, axis=axes)
    # xhat_i = (x_i - mu_B) / sqrt(sigma_B^2 + eps)
    xhat = xc / np.sqrt(var + eps).reshape(shape)
    # y_i = gamma * xhat_i + beta
    y = gamma.reshape(shape) * xhat + beta.reshape(shape)
    return _relu(y.astype(x.dtype), relu), mean.astype(x.dtype), var.astype(x.dtype)


def batch_norm_train_backward(dy, x, gamma, mean, var, eps, relu_out=None):
    """The paper's backward pass (Sec. 3), given the forward's batch mean and var. With a
    fused ReLU (relu_out: the forward's output), dy first goes through the ReLU's
    backward: dy * [relu_out > 0].

    The paper's chain rule, with l the loss and dl/dy = dy:
        dl/dxhat_i = dy_i * gamma
        dl/dvar    = sum_i dl/dxhat_i * (x_i - mu) * -1/2 * (var + eps)^(-3/2)
        dl/dmu     = sum_i dl/dxhat_i * -1/sqrt(var + eps)
                     (+ dl/dvar * sum_i -2 (x_i - mu) / m, which is 0)
        dl/dx_i    = dl/dxhat_i / sqrt(var + eps) + dl/dvar * 2 (x_i - mu) / m + dl/dmu / m
        dl/dgamma  = sum_i dy_i * xhat_i
        dl/dbeta   = sum_i dy_i
    Substituting the sums collapses it to two per-channel reductions:
        dx_i = gamma / sqrt(var + eps) * (dy_i - dbeta/m - xhat_i * dgamma/m)
    """
    axes, shape = _per_channel(x)
    m = x.size // x.shape[1]
    x64 = np.asarray(x, dtype=np.float64)
    dy64 = np.asarray(_relu_masked(dy, relu_out), dtype=np.float64)
    inv_std = 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
    xhat = (x64 - mean.reshape(shape)) * inv_std.reshape(shape)
    dbeta = dy64.sum(axis=axes)
    dgamma = (dy64 * xhat).sum(axis=axes)
    k = (gamma * inv_std).reshape(shape)
    dx = k * (dy64 - dbeta.reshape(shape) / m - xhat * (dgamma.reshape(shape) / m))
    return dx.astype(x.dtype), dgamma.astype(x.dtype), dbeta.astype(x.dtype)


def _folded(gamma, beta, running_mean, running_var, eps):
    """Inference (Algorithm 2, step 11) is one affine map per channel:
        y = gamma / sqrt(Var[x] + eps) * x + (beta - gamma * E[x] / sqrt(Var[x] + eps))
    with the population statistics E[x], Var[x] estimated by the running averages."""
    scale = gamma / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    shift = beta - running_mean * scale
    return scale, shift


def batch_norm_eval_forward(x, gamma, beta, running_mean, running_var, eps, relu=False):
    _, shape = _per_channel(x)
    scale, shift = _folded(gamma, beta, running_mean, running_var, eps)
    y = np.asarray(x, dtype=np.float64) * scale.reshape(shape) + shift.reshape(shape)
    return _relu(y.astype(x.dtype), relu)


def batch_norm_eval_backward(dy, x, gamma, running_mean, running_var, eps, relu_out=None):
    """Gradient of the eval forward: the statistics are constants here, so dx is just dy
    times the per-channel scale; dgamma and dbeta are as in training with xhat computed
    from the running statistics."""
    axes, shape = _per_channel(x)
    inv_std = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    dy64 = np.asarray(_relu_masked(dy, relu_out), dtype=np.float64)
    xhat = (np.asarray(x, dtype=np.float64) - running_mean.reshape(shape)) * inv_std.reshape(shape)
    dbeta = dy64.sum(axis=axes)
    dgamma = (dy64 * xhat).sum(axis=axes)
    dx = dy64 * (gamma * inv_std).reshape(shape)
    return dx.astype(x.dtype), dgamma.astype(x.dtype), dbeta.astype(x.dtype)
