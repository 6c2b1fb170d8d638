"""2-D convolution (cross-correlation, as in PyTorch) in plain NumPy.

Written to be read: the test oracle and the "numpy" backend. Everything goes through one
idea, the column matrix ("im2col"):

    cols[n, g, (c, r, s), (i, j)] = x_padded[n, g*Cg + c, i*sh + r*dh, j*sw + s*dw]

so that a convolution is a batched matrix product with the weights, and its two
gradients are the two other products of the same three matrices:

    y    = w_mat @ cols              forward
    dcol = w_mat^T @ dy  -> col2im   backward-input (col2im scatters back onto x)
    dw   = dy @ cols^T               backward-weight (summed over the batch)

with w_mat[g] = w[g*Kg:(g+1)*Kg].reshape(Kg, Cg*R*S). Shapes follow kernels/README.md.
"""

import numpy as np


def _out_size(size, k, stride, padding, dilation):
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _window(r, s, Ho, Wo, stride, dilation):
    """Slices of the padded input that kernel offset (r, s) sees, one element per output."""
    (sh, sw), (dh, dw) = stride, dilation
    return (slice(r * dh, r * dh + sh * (Ho - 1) + 1, sh),
            slice(s * dw, s * dw + sw * (Wo - 1) + 1, sw))


def _im2col(x, R, S, stride, padding, dilation, groups):
    """x (N, C, H, W) -> cols (N, G, Cg*R*S, Ho*Wo)."""
    N, C, H, W = x.shape
    ph, pw = padding
    Ho = _out_size(H, R, stride[0], ph, dilation[0])
    Wo = _out_size(W, S, stride[1], pw, dilation[1])
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((N, C, R, S, Ho, Wo), dtype=x.dtype)
    for r in range(R):
        for s in range(S):
            rows, cs = _window(r, s, Ho, Wo, stride, dilation)
            cols[:, :, r, s] = xp[:, :, rows, cs]
    # (c, r, s) is the contraction index; channels of one group are contiguous in c.
    return cols.reshape(N, groups, (C // groups) * R * S, Ho * Wo), Ho, Wo


def _col2im(cols, x_shape, R, S, Ho, Wo, stride, padding, dilation):
    """The adjoint of _im2col: cols (N, G, Cg*R*S, Ho*Wo) -> x-shaped sums (N, C, H, W)."""
    N, C, H, W = x_shape
    ph, pw = padding
    cols = cols.reshape(N, C, R, S, Ho, Wo)
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for r in range(R):
        for s in range(S):
            rows, cs = _window(r, s, Ho, Wo, stride, dilation)
            # Windows of different (r, s) overlap, so accumulate; within one offset
            # the strided slice hits each input position at most once.
            xp[:, :, rows, cs] += cols[:, :, r, s]
    return xp[:, :, ph:ph + H, pw:pw + W]


def _w_mat(w, groups):
    K, Cg, R, S = w.shape
    return w.reshape(groups, K // groups, Cg * R * S)


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    N = x.shape[0]
    K, _, R, S = w.shape
    cols, Ho, Wo = _im2col(x, R, S, stride, padding, dilation, groups)
    # (G, Kg, CgRS) @ (N, G, CgRS, P) broadcasts over N: one BLAS GEMM per (n, g).
    y = np.matmul(_w_mat(w, groups), cols).reshape(N, K, Ho, Wo)
    if b is not None:
        y += b.reshape(1, K, 1, 1)
    return y


def conv2d_backward_input(dy, w, x_shape, stride, padding, dilation, groups):
    N, K, Ho, Wo = dy.shape
    _, _, R, S = w.shape
    dy_mat = dy.reshape(N, groups, K // groups, Ho * Wo)
    dcols = np.matmul(_w_mat(w, groups).transpose(0, 2, 1), dy_mat)
    dx = _col2im(dcols, x_shape, R, S, Ho, Wo, stride, padding, dilation)
    return np.ascontiguousarray(dx)


def conv2d_backward_weight(dy, x, w_shape, stride, padding, dilation, groups):
    N, K, Ho, Wo = dy.shape
    _, Cg, R, S = w_shape
    cols, _, _ = _im2col(x, R, S, stride, padding, dilation, groups)
    dy_mat = dy.reshape(N, groups, K // groups, Ho * Wo)
    # dw[g] = sum_n dy[n, g] @ cols[n, g]^T: contract over the batch and output positions.
    dw = np.empty((groups, K // groups, Cg * R * S), dtype=dy.dtype)
    for g in range(groups):
        dw[g] = np.tensordot(dy_mat[:, g], cols[:, g], axes=([0, 2], [0, 2]))
    return dw.reshape(w_shape)


def conv2d_backward_bias(dy):
    return dy.sum(axis=(0, 2, 3))


# ---- channels-last (NHWC) entry points: the same math on (N, H, W, C) arrays ----------
# The oracle of kernels/cpu/conv2d_nhwc.py and the "numpy" backend's channels_last path:
# transpose to NCHW, run the functions above, transpose back. Weights stay (K, C, R, S).

def _to_nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _to_nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def conv2d_forward_nhwc(x, w, b, stride, padding, dilation):
    return _to_nhwc(conv2d_forward(_to_nchw(x), w, b, stride, padding, dilation, 1))


def conv2d_backward_input_nhwc(dy, w, x_shape, stride, padding, dilation):
    N, H, W, C = x_shape
    return _to_nhwc(conv2d_backward_input(_to_nchw(dy), w, (N, C, H, W), stride, padding,
                                          dilation, 1))


def conv2d_backward_weight_nhwc(dy, x, w_shape, stride, padding, dilation):
    return conv2d_backward_weight(_to_nchw(dy), _to_nchw(x), w_shape, stride, padding,
                                  dilation, 1)


def conv2d_backward_bias_nhwc(dy):
    return dy.sum(axis=(0, 1, 2))
