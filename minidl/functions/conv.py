"""conv2d as one tape node over the backend's kernels (forward, backward-input,
backward-weight, backward-bias)."""
from __future__ import annotations

from .. import layout as mf
from ..autograd import record
from ..backend import backend_for
from ..tensor import Tensor
from ._kernel_args import check_float, check_ndim, contiguous, pair
from ._util import ShapeError


def conv2d_output_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> Tensor:
    """2-D cross-correlation of x (N, C, H, W) with weight (K, C/groups, R, S)."""
    op = "conv2d"
    check_ndim(op, "input", x, (4,), "(N, C, H, W)")
    check_ndim(op, "weight", weight, (4,), "(K, C/groups, R, S)")
    stride, padding, dilation = (pair(stride, "stride", op), pair(padding, "padding", op),
                                 pair(dilation, "dilation", op))
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"{op}: need stride >= 1, dilation >= 1, padding >= 0; got stride "
                         f"{stride}, dilation {dilation}, padding {padding}")
    n, c, h, w = x.shape
    k, cg, r, s = weight.shape
    if groups < 1 or c % groups or k % groups or cg * groups != c:
        raise ShapeError(f"{op}: input {x.shape} and weight {weight.shape} do not fit with "
                         f"groups={groups} (need C = weight.shape[1] * groups and K divisible "
                         f"by groups)")
    if bias is not None and bias.shape != (k,):
        raise ShapeError(f"{op}: bias {bias.shape} does not fit weight {weight.shape}")
    ho = conv2d_output_size(h, r, stride[0], padding[0], dilation[0])
    wo = conv2d_output_size(w, s, stride[1], padding[1], dilation[1])
    if ho < 1 or wo < 1:
        raise ShapeError(f"{op}: kernel {weight.shape[2:]} (dilation {dilation}) is larger "
                         f"than the padded input {x.shape[2:]} (padding {padding})")
    check_float(op, input=x.data, weight=weight.data, bias=None if bias is None else bias.data)

    K = backend_for(x, weight)
    parents = (x, weight) if bias is None else (x, weight, bias)
    b = None if bias is None else bias.data
    if mf.is_channels_last(x.data) or mf.is_channels_last(weight.data):
        return _conv2d_channels_last(K, x, weight, b, parents, stride, padding, dilation, groups)
    xd, wd = contiguous(x.data), contiguous(weight.data)
    out = K.conv2d_forward(xd, wd, b, stride, padding, dilation, groups)

    def backward(g, needs):
        g = contiguous(g)
        # A first layer's input needs no gradient: skip the most expensive kernel.
        gx = (K.conv2d_backward_input(g, wd, x.shape, stride, padding, dilation, groups)
              if needs[0] else None)
        gw = (K.conv2d_backward_weight(g, xd, weight.shape, stride, padding, dilation, groups)
              if needs[1] else None)
        if bias is None:
            return gx, gw
        return gx, gw, (K.conv2d_backward_bias(g) if needs[2] else None)
    return record(out, parents, backward, "Conv2d")


def _conv2d_channels_last(K, x, weight, b, parents, stride, padding, dilation, groups):
    """conv2d with a channels_last output (input or weight channels_last): the NHWC
    kernels read the input's memory as it is and write the output's, no conversion.
    Weights are handed over in (K, C, R, S) order (the kernels pack them anyway). Grouped
    convolutions have no NHWC kernels: they run in NCHW and convert."""
    n, c, h, w = x.shape
    wd = mf.convert(weight.data, mf.contiguous_format)
    w_format = mf.format_of(weight.data)
    x_format = mf.format_of(x.data)
    if groups != 1:
        xd = contiguous(mf.convert(x.data, mf.contiguous_format))
        out = mf.convert(K.conv2d_forward(xd, wd, b, stride, padding, dilation, groups),
                         mf.channels_last)

        def backward(g, needs):
            g = mf.convert(g, mf.contiguous_format)
            gx = (mf.convert(K.conv2d_backward_input(g, wd, x.shape, stride, padding,
                                                     dilation, groups), x_format)
                  if needs[0] else None)
            gw = (mf.convert(K.conv2d_backward_weight(g, xd, weight.shape, stride, padding,
                                                      dilation, groups), w_format)
                  if needs[1] else None)
            gb = K.conv2d_backward_bias(g) if len(needs) > 2 and needs[2] else None
            return (gx, gw) if len(needs) == 2 else (gx, gw, gb)
        return record(out, parents, backward, "Conv2d")

    xd = mf.nhwc(x.data)  # a view for a channels_last x, else one conversion
    out = mf.from_nhwc(K.conv2d_forward_nhwc(xd, wd, b, stride, padding, dilation))

    def backward(g, needs):
        g = mf.nhwc(g)
        gx = (mf.convert(mf.from_nhwc(K.conv2d_backward_input_nhwc(
            g, wd, (n, h, w, c), stride, padding, dilation)), x_format) if needs[0] else None)
        gw = (mf.convert(K.conv2d_backward_weight_nhwc(g, xd, weight.shape, stride, padding,
                                                       dilation), w_format)
              if needs[1] else None)
        gb = K.conv2d_backward_bias_nhwc(g) if len(needs) > 2 and needs[2] else None
        return (gx, gw) if len(needs) == 2 else (gx, gw, gb)
    return record(out, parents, backward, "Conv2d")
