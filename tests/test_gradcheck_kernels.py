"""The kernel-backed ops through the tape, against float64 finite differences, on both
CPU backends: conv2d (stride, padding, dilation, groups), batch_norm in training and
eval mode (2-D and 4-D), max/avg/global pooling."""
import pytest

import minidl as md
import minidl.nn.functional as F


@pytest.fixture(params=["numba", "numpy"], autouse=True)
def backend(request):
    md.set_backend(request.param)
    yield request.param
    md.set_backend("numba")


def t64(rng, *shape, scale=1.0):
    return md.tensor(rng.standard_normal(shape) * scale, requires_grad=True)


@pytest.mark.parametrize("n, c, h, w, k, r, stride, padding, dilation, groups", [
    (1, 1, 5, 4, 2, 3, 1, 0, 1, 1),
    (2, 4, 5, 5, 6, 3, 2, 1, 1, 2),
    (2, 3, 6, 5, 3, 3, 1, 2, 2, 3),     # depthwise, dilation 2
    (1, 2, 4, 4, 3, 1, 1, 0, 1, 1),     # 1x1
])
def test_conv2d(n, c, h, w, k, r, stride, padding, dilation, groups, rng):
    x = t64(rng, n, c, h, w)
    wt = t64(rng, k, c // groups, r, r)
    b = t64(rng, k)
    assert md.gradcheck(lambda x, wt, b: F.conv2d(x, wt, b, stride, padding, dilation, groups),
                        [x, wt, b])


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 3, 2), (1, 2, 3, 3)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("op", ["batch_norm", "batch_norm_relu"])
@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
def test_batch_norm(shape, training, op, fmt, rng):
    if fmt == "channels_last" and len(shape) == 2:
        pytest.skip("2-D input has no memory format")
    x = t64(rng, *shape, scale=2.0)
    if fmt == "channels_last":
        x = x.detach().to(memory_format=md.channels_last)
        x.requires_grad = True
        assert x.is_contiguous(memory_format=md.channels_last)
    bn = getattr(F, op)  # batch_norm_relu: relu(batch_norm(...)) fused
    c = shape[1]
    gamma, beta = t64(rng, c), t64(rng, c)
    rm = md.tensor(rng.standard_normal(c))
    rv = md.tensor(rng.uniform(0.5, 2.0, c))
    if training:
        # Running stats are updated in place on every call: give gradcheck fresh copies.
        def fn(x, g, b):
            return bn(x, md.tensor(rm.data.copy()), md.tensor(rv.data.copy()), g, b,
                      training=True)
    else:
        def fn(x, g, b):
            return bn(x, rm, rv, g, b, training=False)
    assert md.gradcheck(fn, [x, gamma, beta], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode", [
    (2, 2, 0, False), (3, 2, 1, False), (3, 1, 1, False), (2, 2, 1, True)])
def test_pools(kernel, stride, padding, ceil_mode, rng):
    # Distinct values keep max pooling away from ties, where it is not differentiable.
    x = md.tensor(rng.permutation(2 * 2 * 5 * 5).reshape(2, 2, 5, 5) / 10.0,
                  requires_grad=True)
    assert md.gradcheck(lambda x: F.max_pool2d(x, kernel, stride, padding, ceil_mode), [x])
    for count_include_pad in (True, False):
        assert md.gradcheck(lambda x, cip=count_include_pad: F.avg_pool2d(
            x, kernel, stride, padding, ceil_mode, cip), [x])
    assert md.gradcheck(lambda x: F.adaptive_avg_pool2d(x, 1), [x])


def test_first_layer_skips_input_gradient(rng):
    x = md.tensor(rng.standard_normal((2, 1, 5, 5)))          # data: no grad wanted
    wt = t64(rng, 3, 1, 3, 3)
    F.conv2d(x, wt, padding=1).sum().backward()
    assert x.grad is None and wt.grad is not None


@pytest.mark.parametrize("call, pattern", [
    (lambda: F.conv2d(md.randn(2, 3, 8, 8), md.randn(4, 2, 3, 3)),
     r"\(2, 3, 8, 8\).*\(4, 2, 3, 3\)"),
    (lambda: F.conv2d(md.randn(3, 8, 8), md.randn(4, 3, 3, 3)), r"\(N, C, H, W\).*\(3, 8, 8\)"),
    (lambda: F.conv2d(md.randn(1, 1, 2, 2), md.randn(1, 1, 3, 3)), r"larger than the padded"),
    (lambda: F.conv2d(md.randn(1, 1, 4, 4), md.randn(1, 1, 3, 3, dtype=md.float64)), "dtype"),
    (lambda: F.batch_norm(md.randn(4, 5), md.zeros(3), md.ones(3)), r"\(3,\).*\(4, 5\)"),
    (lambda: F.batch_norm(md.randn(1, 5), None, None, training=True), "more than 1 value"),
    (lambda: F.batch_norm_relu(md.randn(4, 5), md.zeros(3), md.ones(3)),
     r"batch_norm_relu: running_mean has shape \(3,\).*\(4, 5\)"),
    (lambda: F.batch_norm_relu(md.randn(3, 5, 2), None, None), r"batch_norm_relu.*\(3, 5, 2\)"),
    (lambda: F.max_pool2d(md.randn(1, 1, 4, 4), 2, padding=2), "at most half"),
])
def test_bad_input_gives_clear_errors(call, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        call()
