"""nn.Sequential runs a BatchNorm followed by a ReLU as one op (F.batch_norm_relu): the
same values, gradients and running statistics, bitwise, as the two modules one after
the other; never where a hook or a subclass could tell the difference."""
import copy

import numpy as np
import pytest

import minidl as md
from minidl import nn


def _pair(bn, train, dtype):
    """nn.Sequential(bn, ReLU) and a copy of it, in dtype, with gamma and beta not at
    their defaults (1, 0) and, for eval, non-trivial running statistics."""
    model = nn.Sequential(bn, nn.ReLU()).to(dtype)
    model.train(train)
    rng = np.random.default_rng(1)
    for p in model.parameters():
        p.data[...] = rng.uniform(0.5, 1.5, p.shape)
    model[0].running_mean.data[...] = 0.3
    model[0].running_var.data[...] = 1.7
    return model, copy.deepcopy(model)


@pytest.mark.parametrize("shape, fmt", [((6, 5), None), ((3, 4, 5, 6), "nchw"),
                                        ((3, 4, 5, 6), "channels_last"), ((1, 3, 1, 1), "nchw")])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bn_relu_in_sequential_is_fused_and_bitwise_the_same(shape, fmt, train, dtype):
    if train and shape[0] * (shape[2] * shape[3] if len(shape) == 4 else 1) < 2:
        pytest.skip("one value per channel")
    rng = np.random.default_rng(2)
    bn = nn.BatchNorm1d(shape[1]) if len(shape) == 2 else nn.BatchNorm2d(shape[1])
    fused, plain = _pair(bn, train, dtype)
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    xs = [md.tensor(x.copy(), requires_grad=True) for _ in range(2)]
    if fmt == "channels_last":
        xs = [t.detach().to(memory_format=md.channels_last) for t in xs]
        for t in xs:
            t.requires_grad = True
    ya = fused(xs[0])
    yb = md.relu(plain[0](xs[1]))  # the two modules one after the other
    assert ya._node.name == "BatchNormReLU" and yb._node.name == "Relu"
    assert (ya.data == 0).any() and (ya.data > 0).any()
    np.testing.assert_array_equal(ya.data, yb.data)
    if fmt == "channels_last":
        assert ya.is_contiguous(memory_format=md.channels_last)
    ya.backward(md.tensor(g))
    yb.backward(md.tensor(g))
    np.testing.assert_array_equal(xs[0].grad.data, xs[1].grad.data)
    for pa, pb in zip(fused.parameters(), plain.parameters()):
        np.testing.assert_array_equal(pa.grad.data, pb.grad.data)
    for ba, bb in zip(fused.buffers(), plain.buffers()):
        np.testing.assert_array_equal(ba.data, bb.data)


def _model():
    md.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU())


def test_a_hook_on_the_relu_sees_its_input_so_nothing_is_fused():
    model, seen = _model(), []
    model[2].register_forward_hook(lambda m, args, out: seen.append(args[0].data.copy()))
    y = model(md.randn(8, 3))
    assert y._node.name == "Relu" and len(seen) == 1
    assert (seen[0] < 0).any()  # the batch norm's own output, before the ReLU


def test_a_hook_on_the_batch_norm_sees_its_own_output():
    model, seen = _model(), []
    model[1].register_forward_hook(lambda m, args, out: seen.append(out.data.copy()))
    model(md.randn(8, 3))
    assert (seen[0] < 0).any()


def test_a_relu_subclass_with_its_own_forward_runs_it():
    class Leaky(nn.ReLU):
        def forward(self, x):
            return md.relu(x) - md.relu(-x) * 0.5

    md.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), Leaky())
    y = model(md.randn(8, 3))
    assert (y.data < 0).any()


def test_training_steps_are_bitwise_the_same_fused_or_not():
    """A small conv-BN-ReLU network, three SGD steps: fused (default) and kept apart by a
    hook on each ReLU give the same losses and parameters, bit for bit."""
    def run(fuse):
        md.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                              nn.ReLU(), nn.Conv2d(4, 3, 3, bias=False), nn.BatchNorm2d(3),
                              nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if not fuse:
            for m in model:
                if isinstance(m, nn.ReLU):
                    m.register_forward_hook(lambda *args: None)
        opt = md.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        rng, losses = np.random.default_rng(3), []
        for _ in range(3):
            x = md.tensor(rng.standard_normal((5, 2, 6, 6)).astype(np.float32))
            y = md.tensor(rng.integers(0, 3, 5))
            opt.zero_grad()
            loss = md.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.data.copy())
        return losses, model.state_dict()

    (la, sa), (lb, sb) = run(True), run(False)
    np.testing.assert_array_equal(la, lb)
    for k in sa:
        np.testing.assert_array_equal(np.asarray(sa[k]), np.asarray(sb[k]), err_msg=k)
