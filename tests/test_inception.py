"""BN-Inception-lite: layer table, parameter count, shapes, gradients, state_dict."""
import numpy as np
import pytest

import minidl as md
from minidl import nn
from minidl.models import bn_inception_lite, model_summary
from minidl.models.inception import (InceptionModule, ReductionModule,
                                     last_inception_preactivation)


def expected_parameters(bn: bool, cin: int = 1, classes: int = 10) -> int:
    """Counted from the layer table in the model's docstring, independently of the code."""
    convs = [  # (in, out, k)
        (cin, 16, 3), (16, 32, 3),                                     # stem
        (32, 16, 1), (32, 16, 1), (16, 24, 3), (32, 16, 1), (16, 24, 3), (24, 24, 3),
        (32, 16, 1),                                                   # 3a -> 80
        (80, 32, 1), (32, 48, 3), (80, 32, 1), (32, 48, 3), (48, 48, 3),  # 3b -> 176
        (176, 64, 1), (176, 48, 1), (48, 64, 3), (176, 48, 1), (48, 64, 3), (64, 64, 3),
        (176, 32, 1),                                                  # 4a -> 224
    ]
    weights = sum(i * o * k * k for i, o, k in convs)
    per_conv = sum(2 * o if bn else o for _, o, _ in convs)  # gamma+beta, or a bias
    return weights + per_conv + 224 * classes + classes


@pytest.mark.parametrize("bn", [True, False])
def test_parameter_count_follows_the_layer_table(bn):
    model = bn_inception_lite(bn=bn)
    assert sum(p.data.size for p in model.parameters()) == expected_parameters(bn)
    s = model_summary(model, (1, 28, 28))
    assert s["parameters"] == expected_parameters(bn)
    assert 190_000 < s["parameters"] < 210_000          # "roughly 200K"
    assert 14e6 < s["macs_per_example"] < 17e6          # "roughly 15M multiply-adds"


def test_module_widths_and_output_shapes():
    md.manual_seed(0)
    model = bn_inception_lite()
    mods = [m for m in model.modules() if isinstance(m, (InceptionModule, ReductionModule))]
    assert [m.out_channels for m in mods] == [80, 176, 224]
    shapes = []
    handles = [m.register_forward_hook(lambda m, i, o: shapes.append(o.shape)) for m in mods]
    out = model(md.randn(1, 1, 28, 28))  # batch size 1
    assert out.shape == (1, 10)
    assert shapes == [(1, 80, 14, 14), (1, 176, 7, 7), (1, 224, 7, 7)]
    for h in handles:
        h.remove()
    rgb = bn_inception_lite(num_classes=7, in_channels=3)
    assert rgb(md.randn(2, 3, 32, 32)).shape == (2, 7)


def test_bn_and_plain_variants_differ_as_the_paper_says():
    bn = bn_inception_lite(bn=True, activation="sigmoid")
    plain = bn_inception_lite(bn=False)
    convs_bn = [m for m in bn.modules() if isinstance(m, nn.Conv2d)]
    convs_plain = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs_bn) == len(convs_plain) == 21
    assert all(c.bias is None for c in convs_bn) and all(c.bias is not None for c in convs_plain)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 21
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, nn.Sigmoid) for m in bn.modules()) == 21
    assert not any(isinstance(m, (nn.Dropout, nn.ReLU)) for m in bn.modules())
    assert isinstance(last_inception_preactivation(bn), nn.Sigmoid)


def test_he_initialization():
    md.manual_seed(0)
    model = bn_inception_lite()
    conv = [m for m in model.modules()
            if isinstance(m, nn.Conv2d) and m.weight.shape == (64, 64, 3, 3)][0]
    std = float(conv.weight.data.std())
    assert abs(std - np.sqrt(2 / (64 * 9))) < 0.1 * np.sqrt(2 / (64 * 9))


@pytest.mark.parametrize("bn,activation", [(True, "relu"), (False, "sigmoid")])
def test_forward_and_backward_gradcheck_float64(bn, activation):
    md.manual_seed(1)
    model = bn_inception_lite(num_classes=3, bn=bn, activation=activation, width=0.125).double()
    model.train()
    x = md.randn(2, 1, 8, 8, dtype=md.float64, requires_grad=True)
    params = list(model.parameters())
    checked = [params[0], params[len(params) // 2], params[-2]]  # stem, middle, classifier
    assert md.gradcheck(lambda x, *ps: model(x), [x] + checked, atol=1e-5, rtol=1e-3)


def test_state_dict_round_trip_reproduces_outputs_bit_for_bit(tmp_path):
    md.manual_seed(2)
    model = bn_inception_lite()
    x = md.randn(4, 1, 28, 28)
    model.train()
    model(x)  # move the running statistics away from their start
    model.eval()
    with md.no_grad():
        expected = model(x).data.copy()
    md.save(model.state_dict(), tmp_path / "m.npz")
    md.manual_seed(99)
    other = bn_inception_lite()
    other.load_state_dict(md.load(tmp_path / "m.npz"))
    other.eval()
    with md.no_grad():
        np.testing.assert_array_equal(other(x).data, expected)


@pytest.mark.parametrize("kwargs,match", [
    ({"activation": "tanh"}, "activation"), ({"width": 0}, "width"),
    ({"num_classes": 0}, "num_classes")])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bn_inception_lite(**kwargs)


@pytest.mark.parametrize("bn,activation", [(True, "relu"), (False, "sigmoid")])
def test_matches_the_pytorch_twin_forward_and_backward(bn, activation):
    torch = pytest.importorskip("torch")
    from minidl.benchmarks.inception_torch import copy_from_minidl, torch_bn_inception_lite
    md.manual_seed(3)
    model = bn_inception_lite(bn=bn, activation=activation)
    twin = torch_bn_inception_lite(bn=bn, activation=activation)
    copy_from_minidl(twin, model)
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    y = np.array([1, 7, 3])
    loss = nn.functional.cross_entropy(model(md.tensor(x)), md.tensor(y))
    loss.backward()
    tloss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
    tloss.backward()
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-4)
    tparams = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, tparams[name].grad.numpy(), rtol=2e-3,
                                   atol=2e-5 * float(np.abs(p.grad).max()), err_msg=name)
    tbuffers = dict(twin.named_buffers())
    for name, b in model.named_buffers():  # running statistics after one training step
        np.testing.assert_allclose(np.asarray(b.data, dtype=np.float64),
                                   tbuffers[name].numpy().astype(np.float64), rtol=1e-4,
                                   atol=1e-6, err_msg=name)
