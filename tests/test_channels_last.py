"""channels_last memory format: PyTorch's semantics, every op in both formats against the
NCHW result (both backends), formats kept in outputs and gradients, mixed formats,
a whole model converted with Module.to(memory_format=...), gradcheck."""
import numpy as np
import pytest

import minidl as md
from minidl import layout, nn
from minidl.nn import functional as F

CL, CF = md.channels_last, md.contiguous_format


def _rand(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.fixture(params=["numba", "numpy"])
def backend(request):
    old = md.get_backend()
    md.set_backend(request.param)
    yield request.param
    md.set_backend(old)


# ---- the format itself ------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 6, 7), (3, 8, 1, 1), (1, 1, 1, 1)])
def test_format_semantics_match_pytorch(shape):
    torch = pytest.importorskip("torch")
    a = _rand(shape)
    ours = md.tensor(a).to(memory_format=CL)
    theirs = torch.from_numpy(a).to(memory_format=torch.channels_last)
    assert ours.shape == tuple(theirs.shape)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    for fmt, tfmt in ((CL, torch.channels_last), (CF, torch.contiguous_format)):
        assert ours.is_contiguous(memory_format=fmt) == theirs.is_contiguous(memory_format=tfmt)
    # element strides of an unambiguous channels_last tensor are PyTorch's
    if shape[1] > 1 and shape[2] * shape[3] > 1:
        assert tuple(s // 8 for s in ours.data.strides) == theirs.stride()
    back = ours.contiguous()
    assert back.is_contiguous() and not layout.is_channels_last(back.data)
    np.testing.assert_array_equal(back.numpy(), a)


def test_conversion_returns_self_when_already_in_format_and_rejects_bad_input():
    x = md.randn(2, 3, 4, 5)
    assert x.contiguous() is x
    y = x.to(memory_format=CL)
    assert y is not x and y.to(memory_format=CL) is y
    with pytest.raises(ValueError, match="4-D"):
        md.randn(2, 3).to(memory_format=CL)
    with pytest.raises(ValueError, match="memory_format"):
        x.contiguous(memory_format="nhwc")


def test_conversion_is_differentiable_and_gradient_keeps_each_format():
    x = md.tensor(_rand((2, 3, 4, 5)), requires_grad=True)
    y = x.to(memory_format=CL)
    z = y * y
    assert layout.is_channels_last(z.data)  # NumPy's ufuncs keep the layout
    z.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.data)
    assert x.grad.is_contiguous()


# ---- every op, both formats, both backends ----------------------------------------------

W = _rand((6, 5, 3, 3), seed=1)
W1 = _rand((4, 1, 3, 3), seed=2)
CASES = {
    "conv3x3": lambda t: F.conv2d(t, md.tensor(W), padding=1),
    "conv3x3_s2": lambda t: F.conv2d(t, md.tensor(W), stride=2, padding=1),
    "conv3x3_dil2": lambda t: F.conv2d(t, md.tensor(W), padding=2, dilation=2),
    "conv1x1": lambda t: F.conv2d(t, md.tensor(W[:, :, :1, :1].copy())),
    "conv_depthwise": lambda t: F.conv2d(t, md.tensor(_rand((10, 1, 3, 3), seed=8)),
                                         padding=1, groups=5),
    "batch_norm": lambda t: F.batch_norm(t, None, None, md.tensor(_rand(5, 3)),
                                         md.tensor(_rand(5, 4)), training=True),
    "batch_norm_eval": lambda t: F.batch_norm(t, md.tensor(_rand(5, 5)),
                                              md.tensor(np.abs(_rand(5, 6)) + 0.5),
                                              training=False),
    "batch_norm_relu": lambda t: F.batch_norm_relu(t, None, None, md.tensor(_rand(5, 3)),
                                                   md.tensor(_rand(5, 4)), training=True),
    "batch_norm_relu_eval": lambda t: F.batch_norm_relu(
        t, md.tensor(_rand(5, 5)), md.tensor(np.abs(_rand(5, 6)) + 0.5), training=False),
    "max_pool": lambda t: F.max_pool2d(t, 3, 2, 1),
    "max_pool_ceil": lambda t: F.max_pool2d(t, 2, 2, 0, ceil_mode=True),
    "avg_pool": lambda t: F.avg_pool2d(t, 3, 1, 1, count_include_pad=False),
    "avg_pool_ceil": lambda t: F.avg_pool2d(t, 3, 2, 1, ceil_mode=True),
    "global_pool": lambda t: F.adaptive_avg_pool2d(t, 1),
    "relu": md.relu,
    "sigmoid": md.sigmoid,
    "tanh": md.tanh,
    "cat_channels": lambda t: md.cat([t, md.relu(t)], 1),
    "add_scale": lambda t: t * 2.0 + t,
}


@pytest.mark.parametrize("shape", [(3, 5, 9, 7), (1, 5, 4, 4), (2, 5, 1, 1)],
                         ids=["odd", "batch1", "1x1map"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_op_in_channels_last_equals_nchw_and_keeps_the_format(backend, case, shape):
    f = CASES[case]
    if shape[2] < 3 and case.startswith(("conv3x3_dil2", "max_pool", "avg_pool")):
        pytest.skip("window larger than the map")
    x = _rand(shape, seed=7)
    a = md.tensor(x, requires_grad=True)
    b = md.tensor(layout.convert(x, CL), requires_grad=True)
    assert layout.is_channels_last(b.data)
    ya, yb = f(a), f(b)
    np.testing.assert_allclose(yb.numpy() if not yb.requires_grad else yb.data, ya.data,
                               rtol=1e-12, atol=1e-12)
    if ya.shape[1] > 1 and ya.shape[2] * ya.shape[3] > 1:
        assert layout.is_channels_last(yb.data), f"{case}: output lost channels_last"
    g = _rand(ya.shape, seed=9)
    ya.backward(g)
    yb.backward(layout.convert(g, CL))
    np.testing.assert_allclose(b.grad.data, a.grad.data, rtol=1e-11, atol=1e-11)
    if shape[1] > 1 and shape[2] * shape[3] > 1:
        assert layout.is_channels_last(b.grad.data), f"{case}: gradient lost channels_last"


def test_float32_conv_bn_pool_in_channels_last_match_nchw():
    x = _rand((4, 8, 10, 10), dtype=np.float32)
    w = md.tensor(_rand((16, 8, 3, 3), seed=3, dtype=np.float32))

    def f(t):
        return F.max_pool2d(md.relu(F.batch_norm(F.conv2d(t, w, padding=1), None, None,
                                                 training=True)), 2)
    ya, yb = f(md.tensor(x)), f(md.tensor(x).to(memory_format=CL))
    np.testing.assert_allclose(yb.data, ya.data, rtol=2e-5, atol=2e-5)
    assert layout.is_channels_last(yb.data)


# ---- mixed formats ----------------------------------------------------------------------

def test_mixed_formats_give_the_nchw_values():
    x = _rand((2, 5, 6, 6))
    xn, xc = md.tensor(x, requires_grad=True), md.tensor(layout.convert(x, CL),
                                                         requires_grad=True)
    w = md.tensor(layout.convert(W, CL))  # channels_last weight, NCHW input
    ref = F.conv2d(md.tensor(x), md.tensor(W), padding=1)
    out = F.conv2d(xn, w, padding=1)
    np.testing.assert_allclose(out.data, ref.data, rtol=1e-12, atol=1e-12)
    assert layout.is_channels_last(out.data)  # the weight's format decides, as in PyTorch
    s = xn + xc
    c = md.cat([xn, xc], 1)
    np.testing.assert_allclose(s.data, 2 * x)
    np.testing.assert_allclose(c.data, np.concatenate([x, x], 1))
    (s.sum() + c.sum() + out.sum()).backward()
    assert xn.grad.is_contiguous() and layout.is_channels_last(xc.grad.data)
    np.testing.assert_allclose(xc.grad.data, 2.0)  # from the sum and the concatenation


def test_first_layer_takes_the_weights_format():
    x = md.tensor(_rand((3, 1, 8, 8)), requires_grad=False)
    conv = nn.Conv2d(1, 4, 3, padding=1).double()
    ref = conv(x)
    conv.to(memory_format=CL)
    out = conv(x.to(memory_format=CL))
    np.testing.assert_allclose(out.data, ref.data, rtol=1e-12)
    assert layout.is_channels_last(out.data)


# ---- a whole model -------------------------------------------------------------------------

def _cnn():
    md.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
        nn.AvgPool2d(2), nn.Conv2d(12, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, 10)).double()


def test_model_in_channels_last_trains_like_nchw_and_saves_its_state(tmp_path):
    x = _rand((5, 1, 12, 12), seed=4)
    y = md.tensor(np.arange(5) % 10)
    ma, mb = _cnn(), _cnn()
    mb.to(memory_format=CL)
    assert layout.is_channels_last(mb[0].weight.data)
    oa = md.optim.SGD(ma.parameters(), lr=0.1, momentum=0.9)
    ob = md.optim.SGD(mb.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        for m, o, xx in ((ma, oa, md.tensor(x)), (mb, ob, md.tensor(x).to(memory_format=CL))):
            o.zero_grad()
            md.cross_entropy(m(xx), y).backward()
            o.step()
    for (name, pa), pb in zip(ma.state_dict().items(), mb.state_dict().values()):
        np.testing.assert_allclose(pb.data if hasattr(pb, "data") else pb,
                                   pa.data if hasattr(pa, "data") else pa,
                                   rtol=1e-10, atol=1e-12, err_msg=name)
    md.save(mb.state_dict(), tmp_path / "cl.pt")
    mc = _cnn()
    mc.load_state_dict(md.load(tmp_path / "cl.pt"))
    mb.eval(), mc.eval()
    np.testing.assert_allclose(mc(md.tensor(x)).data, mb(md.tensor(x)).data, rtol=1e-12)


def test_gradcheck_through_channels_last_ops():
    x = md.tensor(layout.convert(_rand((2, 3, 6, 6), seed=5), CL), requires_grad=True)
    w = md.tensor(layout.convert(_rand((4, 3, 3, 3), seed=6), CL), requires_grad=True)
    gamma = md.tensor(_rand(4, 8) + 2, requires_grad=True)

    def f(x, w, gamma):
        h = F.batch_norm(F.conv2d(x, w, padding=1), None, None, gamma, training=True)
        return F.avg_pool2d(md.tanh(F.max_pool2d(h, 2, 1)), 2)
    assert md.gradcheck(f, (x, w, gamma))
