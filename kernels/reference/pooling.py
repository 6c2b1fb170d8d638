"""Pooling in plain NumPy: the readable oracle and the "numpy" backend.

PyTorch semantics throughout (see kernels/README.md):

* output size: ``pool_output_size`` below, including the ceil_mode rule that a
  window may not start in the right/bottom padding;
* max pooling treats padding as -inf, returns the first maximum in row-major scan
  order of the window (ties: the earliest element wins) and propagates NaN (the
  *last* NaN in scan order wins, as in PyTorch's CPU kernel);
* average pooling divides by the window clipped to the padded extent [-p, H+p)
  when ``count_include_pad`` (a ceil_mode window may run past it), otherwise by the
  number of real input elements it covers.
"""
import numpy as np


def pool_output_size(size, kernel, stride, padding, ceil_mode):
    """Number of windows along one axis (PyTorch's pooling_output_shape)."""
    span = size + 2 * padding - kernel
    if ceil_mode:
        out = -(-span // stride) + 1
        # The last window must start inside the input or the left padding; with
        # ceil rounding it could otherwise start in the right padding only.
        if (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = span // stride + 1
    return out


def _output_hw(x_shape, kernel_size, stride, padding, ceil_mode):
    H, W = x_shape[2], x_shape[3]
    Ho = pool_output_size(H, kernel_size[0], stride[0], padding[0], ceil_mode)
    Wo = pool_output_size(W, kernel_size[1], stride[1], padding[1], ceil_mode)
    return Ho, Wo


def _pad(x, kernel_size, stride, padding, out_hw, value):
    """Pad H and W of `x` with `value` so that all out_hw windows lie inside. The
    right/bottom side can need more than `padding`: a ceil_mode window may run past it."""
    widths = [(0, 0), (0, 0)]
    for size, k, s, p, out in zip(x.shape[2:], kernel_size, stride, padding, out_hw):
        needed = (out - 1) * s + k  # padded length the windows span
        widths.append((p, max(needed - size - p, 0)))
    return np.pad(x, widths, constant_values=value)


def _kernel_offsets(kernel_size, stride, out_hw):
    """For each kernel offset (i, j), in row-major order, the strided slice of the
    padded input that element (i, j) of every window reads: (i, j, (rows, cols))."""
    (kh, kw), (sh, sw), (Ho, Wo) = kernel_size, stride, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, (slice(i, i + sh * (Ho - 1) + 1, sh), slice(j, j + sw * (Wo - 1) + 1, sw))


def _window_starts(kernel_size, stride, padding, out_hw):
    """Top rows and left columns of the windows in input coordinates (may be < 0)."""
    return (np.arange(out_hw[0]) * stride[0] - padding[0],
            np.arange(out_hw[1]) * stride[1] - padding[1])


def max_pool2d_forward(x, kernel_size, stride, padding, ceil_mode):
    N, C, H, W = x.shape
    out_hw = _output_hw(x.shape, kernel_size, stride, padding, ceil_mode)
    h0, w0 = _window_starts(kernel_size, stride, padding, out_hw)
    xp = _pad(x, kernel_size, stride, padding, out_hw, -np.inf)

    # Scan every window in row-major order, all windows at once, keeping the running
    # max and where it was: the same scan as PyTorch's (and kernels/cpu) per window.
    y = np.full((N, C) + out_hw, -np.inf, dtype=x.dtype)
    # If nothing beats -inf (all real elements are -inf), report the first real element.
    first_real = np.add.outer(np.maximum(h0, 0) * W, np.maximum(w0, 0))
    argmax = np.broadcast_to(first_real, y.shape).astype(np.int64)
    for i, j, rows_cols in _kernel_offsets(kernel_size, stride, out_hw):
        v = xp[(Ellipsis,) + rows_cols]
        # Strict '>' keeps the first max on ties; a NaN always takes over, so NaN
        # propagates and the last NaN wins. Padding (-inf, not NaN) is never taken.
        take = (v > y) | np.isnan(v)
        np.copyto(y, v, where=take)
        index = np.add.outer((h0 + i) * W, w0 + j)  # flat h*W + w of this element
        np.copyto(argmax, np.broadcast_to(index, y.shape), where=take)
    return y, argmax


def max_pool2d_backward(dy, argmax, x_shape):
    N, C, H, W = x_shape
    # Each gradient goes to its window's argmax; overlapping windows (stride < kernel)
    # can share one, so accumulate: bincount sums the weights of repeated indices.
    plane_offset = (np.arange(N * C, dtype=np.int64) * (H * W)).reshape(N, C, 1, 1)
    dx = np.bincount((argmax + plane_offset).ravel(), weights=dy.ravel(),
                     minlength=N * C * H * W)
    return dx.astype(dy.dtype, copy=False).reshape(x_shape)


def _avg_divisors(x_shape, kernel_size, stride, padding, out_hw, count_include_pad):
    """(Ho, Wo) array of the divisor of each window (the area it averages over)."""
    def extent(size, kernel, s, p, out):
        start = np.arange(out) * s - p
        end = start + kernel
        if count_include_pad:
            # Clip to the padded extent only: ceil_mode windows may run past it.
            return np.minimum(end, size + p) - start
        return np.minimum(end, size) - np.maximum(start, 0)

    dh = extent(x_shape[2], kernel_size[0], stride[0], padding[0], out_hw[0])
    dw = extent(x_shape[3], kernel_size[1], stride[1], padding[1], out_hw[1])
    return np.outer(dh, dw)


def avg_pool2d_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad):
    out_hw = _output_hw(x.shape, kernel_size, stride, padding, ceil_mode)
    xp = _pad(x, kernel_size, stride, padding, out_hw, 0)  # zeros add nothing to the sums
    acc = np.zeros(x.shape[:2] + out_hw, dtype=x.dtype)
    for _, _, rows_cols in _kernel_offsets(kernel_size, stride, out_hw):
        acc += xp[(Ellipsis,) + rows_cols]
    div = _avg_divisors(x.shape, kernel_size, stride, padding, out_hw, count_include_pad)
    return acc / div.astype(x.dtype)


def avg_pool2d_backward(dy, x_shape, kernel_size, stride, padding, ceil_mode, count_include_pad):
    N, C, H, W = x_shape
    out_hw = dy.shape[2:]
    div = _avg_divisors(x_shape, kernel_size, stride, padding, out_hw, count_include_pad)
    g = dy / div.astype(dy.dtype)

    # Every element of a window gets the window's share g: the forward's offset loop,
    # run backwards, adding g into a padded gradient that is then cropped.
    padded_hw = [max((out - 1) * s + k, size + p) for size, k, s, p, out
                 in zip((H, W), kernel_size, stride, padding, out_hw)]
    dxp = np.zeros((N, C, *padded_hw), dtype=dy.dtype)
    for _, _, rows_cols in _kernel_offsets(kernel_size, stride, out_hw):
        dxp[(Ellipsis,) + rows_cols] += g
    ph, pw = padding
    return np.ascontiguousarray(dxp[:, :, ph:ph + H, pw:pw + W])


def global_avg_pool2d_forward(x):
    return x.mean(axis=(2, 3), dtype=x.dtype)


def global_avg_pool2d_backward(dy, x_shape):
    N, C, H, W = x_shape
    g = dy / dy.dtype.type(H * W)
    return np.ascontiguousarray(np.broadcast_to(g[:, :, None, None], x_shape))


# ---- channels-last (NHWC) entry points: the same math on (N, H, W, C) arrays ----------
# The oracle of kernels/cpu/pooling_nhwc.py's entry points and the "numpy" backend's
# channels_last path. argmax is laid out like y, (N, Ho, Wo, C), flat h*W + w as above.

def _to_nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _to_nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _nchw_shape(x_shape):
    N, H, W, C = x_shape
    return (N, C, H, W)


def max_pool2d_forward_nhwc(x, kernel_size, stride, padding, ceil_mode):
    y, argmax = max_pool2d_forward(_to_nchw(x), kernel_size, stride, padding, ceil_mode)
    return _to_nhwc(y), _to_nhwc(argmax)


def max_pool2d_backward_nhwc(dy, argmax, x_shape, kernel_size, stride, padding):
    """The geometry is not needed here (argmax says where each gradient goes); it is in
    the contract because a kernel may gather from the covering windows instead."""
    return _to_nhwc(max_pool2d_backward(_to_nchw(dy), _to_nchw(argmax), _nchw_shape(x_shape)))


def avg_pool2d_forward_nhwc(x, kernel_size, stride, padding, ceil_mode, count_include_pad):
    return _to_nhwc(avg_pool2d_forward(_to_nchw(x), kernel_size, stride, padding, ceil_mode,
                                       count_include_pad))


def avg_pool2d_backward_nhwc(dy, x_shape, kernel_size, stride, padding, ceil_mode,
                             count_include_pad):
    return _to_nhwc(avg_pool2d_backward(_to_nchw(dy), _nchw_shape(x_shape), kernel_size,
                                        stride, padding, ceil_mode, count_include_pad))


def global_avg_pool2d_forward_nhwc(x):
    return x.mean(axis=(1, 2), dtype=x.dtype)


def global_avg_pool2d_backward_nhwc(dy, x_shape):
    N, H, W, C = x_shape
    g = dy / dy.dtype.type(H * W)
    return np.ascontiguousarray(np.broadcast_to(g[:, None, None, :], x_shape))
