"""minidl.nn: Module bookkeeping (registration, traversal, modes, hooks, state_dict,
dtype, repr), the initializers, and every layer against torch.nn with the same weights.
"""
import math
from collections import OrderedDict

import numpy as np
import pytest

import minidl
import minidl.nn as nn
from minidl.functions import ShapeError


def assert_close(actual, expected, dtype=np.float32, tol=None):
    actual = np.asarray(getattr(actual, "data", actual))
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    tol = tol or (1e-4 if dtype == np.float32 else 1e-10)
    atol = tol * max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=atol)


def mlp():
    return nn.Sequential(nn.Linear(4, 3), nn.Sequential(nn.Linear(3, 5), nn.ReLU()),
                         nn.Linear(5, 2))


class Block(nn.Module):
    """A user-style module: parameters, a buffer, submodules, a None parameter."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(np.ones(3, np.float32))
        self.register_parameter("shift", None)
        self.register_buffer("count", minidl.zeros(1))
        self.fc = nn.Linear(3, 3)
        self.bn = nn.BatchNorm1d(3)
        self.note = "plain attribute"

    def forward(self, x):
        return self.bn(self.fc(x) * self.scale)


# ------------------------------------------------------------------ registration & traversal

def test_parameter_is_a_leaf_tensor_float32_by_default():
    p = nn.Parameter([1.0, 2.0])
    assert isinstance(p, minidl.Tensor) and p.requires_grad and p.is_leaf
    assert p.dtype == np.float32
    assert nn.Parameter(np.zeros(2)).dtype == np.float64  # an ndarray keeps its dtype
    assert nn.Parameter([1, 2]).dtype == np.float32       # integers become float
    t = minidl.ones(3)
    assert nn.Parameter(t).data is t.data                 # shares the array, like torch
    assert not nn.Parameter(t, requires_grad=False).requires_grad
    assert repr(p).startswith("Parameter containing:\ntensor(")


def test_named_parameters_of_nested_sequential():
    names = [n for n, _ in mlp().named_parameters()]
    assert names == ["0.weight", "0.bias", "1.0.weight", "1.0.bias", "2.weight", "2.bias"]
    m = mlp()
    assert [p.shape for p in m.parameters()] == [(3, 4), (3,), (5, 3), (5,), (2, 5), (2,)]
    assert [n for n, _ in m.named_children()] == ["0", "1", "2"]
    assert [n for n, _ in m.named_modules()] == ["", "0", "1", "1.0", "1.1", "2"]
    assert [n for n, _ in m.named_parameters(recurse=False)] == []


def test_custom_module_registers_in_assignment_order():
    b = Block()
    assert [n for n, _ in b.named_parameters()] == ["scale", "fc.weight", "fc.bias",
                                                    "bn.weight", "bn.bias"]
    assert [n for n, _ in b.named_buffers()] == ["count", "bn.running_mean", "bn.running_var",
                                                 "bn.num_batches_tracked"]
    assert b.shift is None and b.note == "plain attribute"
    assert "note" not in b._parameters and "note" not in b._buffers
    assert b.get_submodule("bn") is b.bn
    with pytest.raises(AttributeError, match="nope"):
        b.get_submodule("fc.nope")


def test_reassignment_and_deletion_keep_registries_in_step():
    b = Block()
    b.fc = nn.Identity()                       # replace a submodule
    assert b._modules["fc"] is b.fc
    b.count = minidl.ones(1)                   # buffers stay buffers on reassignment
    assert b._buffers["count"] is b.count
    b.scale = None                             # a parameter slot may be emptied
    assert b._parameters["scale"] is None and "scale" not in dict(b.named_parameters())
    with pytest.raises(TypeError, match="parameter 'scale'"):
        b.scale = minidl.ones(3)               # a plain tensor is not a Parameter
    del b.bn
    assert "bn" not in b._modules and not hasattr(b, "bn")


def test_assignment_before_init_is_a_clear_error():
    class Forgot(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.ones(2, np.float32))

    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Forgot()


def test_shared_parameters_are_listed_once():
    lin = nn.Linear(3, 3)
    m = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(list(m.parameters())) == 2
    assert list(m.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_train_eval_propagate_to_every_submodule():
    m = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(2)))
    assert all(mod.training for mod in m.modules())
    assert m.eval() is m
    assert not any(mod.training for mod in m.modules())
    m[1].train()
    assert not m.training and m[1].training and m[1][0].training and m[1][1].training
    m.train()
    assert all(mod.training for mod in m.modules())


def test_zero_grad_and_apply():
    m = mlp()
    m(minidl.randn(2, 4)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad(set_to_none=False)
    assert all(not p.grad.data.any() for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    seen = []
    assert m.apply(lambda mod: seen.append(type(mod).__name__)) is m
    assert seen == ["Linear", "Linear", "ReLU", "Sequential", "Linear", "Sequential"]


def test_forward_hooks_observe_replace_and_remove():
    m = mlp()
    x = minidl.randn(2, 4)
    seen = []
    h1 = m[1].register_forward_hook(lambda mod, inp, out: seen.append((mod, inp[0].shape,
                                                                       out.shape)))
    y = m(x)
    assert seen == [(m[1], (2, 3), (2, 5))]
    h2 = m[2].register_forward_hook(lambda mod, inp, out: out * 0)
    assert not m(x).data.any()
    h1.remove()
    h2.remove()
    assert_close(m(x), y.data)
    assert len(seen) == 2  # the removed hook saw nothing more
    pre = m.register_forward_pre_hook(lambda mod, inp: (inp[0] * 0,))
    assert_close(m(x), m(minidl.zeros(2, 4)).data)
    pre.remove()


def test_repr_matches_pytorch_layout():
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                      nn.ReLU(), nn.MaxPool2d(2),
                      nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(64, 10)))
    expected = """Sequential(
  (0): Conv2d(1, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
  (1): BatchNorm2d(4, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
  (2): ReLU()
  (3): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
  (4): Sequential(
    (0): Flatten(start_dim=1, end_dim=-1)
    (1): Dropout(p=0.25, inplace=False)
    (2): Linear(in_features=64, out_features=10, bias=True)
  )
)"""
    assert repr(m) == expected
    assert repr(nn.AvgPool2d(3, 1, 1)) == "AvgPool2d(kernel_size=3, stride=1, padding=1)"
    torch = pytest.importorskip("torch")
    tm = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1, bias=False),
                             torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                             torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.25),
                                                 torch.nn.Linear(64, 10)))
    assert repr(m) == repr(tm)


# ------------------------------------------------------------------------------ state_dict

def test_state_dict_round_trip_copies_in_place():
    minidl.manual_seed(0)
    src, dst = Block(), Block()
    src.bn.running_mean.data[...] = [1, 2, 3]
    src.bn.num_batches_tracked.data[...] = 7
    state = src.state_dict()
    # PyTorch's order: a module's own parameters, then its buffers, then its children.
    assert list(state) == ["scale", "count", "fc.weight", "fc.bias", "bn.weight", "bn.bias",
                           "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert state["bn.num_batches_tracked"].dtype == np.int64
    # Copies: training the source afterwards does not change the saved state.
    src.fc.weight.data += 1
    assert not np.array_equal(state["fc.weight"], src.fc.weight.data)

    weight_array = dst.fc.weight.data
    result = dst.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert dst.fc.weight.data is weight_array  # in place: optimizers keep their references
    for k, v in dst.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    # Tensors are accepted as values too.
    dst.load_state_dict({k: minidl.Tensor(v) for k, v in state.items()})


def test_load_state_dict_names_every_bad_key():
    m = mlp()
    state = m.state_dict()
    del state["1.0.bias"]
    state["extra.weight"] = np.zeros(3)
    state["2.weight"] = np.zeros((5, 2), np.float32)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    with pytest.raises(RuntimeError) as err:
        m.load_state_dict(state)
    msg = str(err.value)
    assert "missing keys: '1.0.bias'" in msg
    assert "unexpected keys: 'extra.weight'" in msg
    assert "'2.weight' (expected shape (2, 5), got (5, 2))" in msg
    # Nothing was loaded by the failed call.
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_load_state_dict_non_strict():
    m = mlp()
    state = {"0.weight": np.full((3, 4), 0.5, np.float32), "bogus": np.zeros(1)}
    result = m.load_state_dict(state, strict=False)
    assert result.unexpected_keys == ["bogus"]
    assert result.missing_keys == ["0.bias", "1.0.weight", "1.0.bias", "2.weight", "2.bias"]
    assert (m[0].weight.data == 0.5).all()
    with pytest.raises(RuntimeError, match="mis-shaped keys: '0.weight'"):
        m.load_state_dict({"0.weight": np.zeros((4, 3))}, strict=False)


def test_to_double_keeps_the_same_parameter_objects():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    params = list(m.parameters())
    m(minidl.randn(5, 3)).sum().backward()
    assert m.double() is m
    assert [id(p) for p in m.parameters()] == [id(p) for p in params]
    assert all(p.dtype == np.float64 and p.grad.dtype == np.float64 for p in params)
    assert m[1].running_var.dtype == np.float64
    assert m[1].num_batches_tracked.dtype == np.int64  # integer buffers are left alone
    y = m(minidl.randn(5, 3, dtype=np.float64))
    assert y.dtype == np.float64
    m.float()
    assert all(p.dtype == np.float32 for p in m.parameters())
    with pytest.raises(ValueError, match="floating"):
        m.to(np.int32)


# -------------------------------------------------------------------------------- containers

def test_sequential_indexing_and_lists():
    m = mlp()
    assert len(m) == 3 and isinstance(m[-1], nn.Linear) and m[-1] is m[2]
    assert [type(x).__name__ for x in m] == ["Linear", "Sequential", "Linear"]
    sub = m[1:]
    assert isinstance(sub, nn.Sequential) and len(sub) == 2 and sub[0] is m[1]
    with pytest.raises(IndexError):
        m[3]
    named = nn.Sequential(OrderedDict(fc=nn.Linear(2, 2), act=nn.Tanh()))
    assert [n for n, _ in named.named_parameters()] == ["fc.weight", "fc.bias"]

    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])
    layers.append(nn.Linear(2, 3))
    layers.insert(0, nn.ReLU())
    assert len(layers) == 4 and isinstance(layers[0], nn.ReLU)
    assert [n for n, _ in layers.named_parameters()][:2] == ["1.weight", "1.bias"]
    del layers[0]
    assert [n for n, _ in layers.named_children()] == ["0", "1", "2"]


def test_concat_joins_branches_along_channels():
    minidl.manual_seed(1)
    branches = [nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 4), nn.Tanh())]
    cat = nn.Concat(*branches, dim=1)
    assert [n for n, _ in cat.named_parameters()] == ["0.weight", "0.bias", "1.0.weight",
                                                      "1.0.bias"]
    x = minidl.randn(5, 3, requires_grad=True)
    y = cat(x)
    assert y.shape == (5, 6)
    assert_close(y[:, :2], branches[0](x).data)
    assert_close(y[:, 2:], branches[1](x).data)
    y.sum().backward()
    x2 = minidl.Tensor(x.data, requires_grad=True)
    (branches[0](x2).sum() + branches[1](x2).sum()).backward()
    assert_close(x.grad, x2.grad.data)


# -------------------------------------------------------------------------------------- init

def test_init_statistics_and_bounds():
    minidl.manual_seed(0)
    w = minidl.zeros(400, 300)
    assert nn.init.kaiming_normal_(w, nonlinearity="relu") is w
    assert abs(w.data.std() / math.sqrt(2 / 300) - 1) < 0.02
    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    assert abs(w.data.std() / math.sqrt(2 / 400) - 1) < 0.02
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))          # U(-1/sqrt(300), 1/sqrt(300))
    bound = 1 / math.sqrt(300)
    assert np.abs(w.data).max() <= bound and np.abs(w.data).max() > 0.99 * bound
    nn.init.xavier_uniform_(w, gain=2.0)
    bound = 2 * math.sqrt(6 / 700)
    assert np.abs(w.data).max() <= bound
    assert abs(w.data.std() / (bound / math.sqrt(3)) - 1) < 0.02
    nn.init.xavier_normal_(w)
    assert abs(w.data.std() / math.sqrt(2 / 700) - 1) < 0.02
    nn.init.normal_(w, 3.0, 0.5)
    assert abs(w.data.mean() - 3) < 0.01 and abs(w.data.std() - 0.5) < 0.01
    nn.init.uniform_(w, -2, 1)
    assert w.data.min() >= -2 and w.data.max() <= 1 and abs(w.data.mean() + 0.5) < 0.01
    assert w.dtype == np.float32
    conv_w = minidl.zeros(64, 8, 3, 3, dtype=np.float64)  # fan_in = 8 * 9
    nn.init.kaiming_normal_(conv_w)
    assert conv_w.dtype == np.float64
    assert abs(conv_w.data.std() / (math.sqrt(2) / math.sqrt(72)) - 1) < 0.03
    assert (nn.init.constant_(w, 0.25).data == 0.25).all()
    assert (nn.init.zeros_(w).data == 0).all() and (nn.init.ones_(w).data == 1).all()
    with pytest.raises(ValueError, match="at least 2 dims"):
        nn.init.xavier_uniform_(minidl.zeros(5))
    with pytest.raises(ValueError, match="mode"):
        nn.init.kaiming_normal_(w, mode="fan_avg")


def test_calculate_gain_matches_torch():
    torch = pytest.importorskip("torch")
    for name, param in [("linear", None), ("conv2d", None), ("sigmoid", None), ("tanh", None),
                        ("relu", None), ("leaky_relu", None), ("leaky_relu", 0.2),
                        ("leaky_relu", math.sqrt(5)), ("selu", None)]:
        assert nn.init.calculate_gain(name, param) == pytest.approx(
            torch.nn.init.calculate_gain(name, param), rel=1e-12)
    with pytest.raises(ValueError):
        nn.init.calculate_gain("swish")


def test_seeding_makes_initialization_repeatable():
    minidl.manual_seed(42)
    a = nn.Sequential(nn.Linear(5, 4), nn.Conv2d(2, 3, 3))
    minidl.manual_seed(42)
    b = nn.Sequential(nn.Linear(5, 4), nn.Conv2d(2, 3, 3))
    c = nn.Sequential(nn.Linear(5, 4), nn.Conv2d(2, 3, 3))
    for (_, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(),
                                         c.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
        assert not np.array_equal(pa.data, pc.data)
    gen = np.random.default_rng(3)
    w1 = nn.init.normal_(minidl.zeros(3), generator=np.random.default_rng(3))
    assert np.array_equal(w1.data, gen.standard_normal(3, dtype=np.float32))


def test_default_layer_init_follows_pytorch():
    minidl.manual_seed(0)
    lin = nn.Linear(200, 300)
    bound = 1 / math.sqrt(200)
    for p in (lin.weight, lin.bias):
        assert np.abs(p.data).max() <= bound
    assert abs(lin.weight.data.std() / (bound / math.sqrt(3)) - 1) < 0.03
    conv = nn.Conv2d(8, 16, (3, 5), groups=2)
    bound = 1 / math.sqrt(4 * 15)
    assert conv.weight.shape == (16, 4, 3, 5)
    assert np.abs(conv.weight.data).max() <= bound and np.abs(conv.bias.data).max() <= bound
    bn = nn.BatchNorm2d(6)
    assert (bn.weight.data == 1).all() and (bn.bias.data == 0).all()
    assert (bn.running_mean.data == 0).all() and (bn.running_var.data == 1).all()
    assert bn.num_batches_tracked.data == 0 and bn.num_batches_tracked.dtype == np.int64
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(6, 4, 3, groups=4)


# ----------------------------------------------------------------------------------- dropout

def test_dropout_scales_survivors_and_is_identity_in_eval():
    minidl.manual_seed(0)
    drop = nn.Dropout(0.3)
    x = minidl.ones(200, 500)
    y = drop(x).data
    kept = y != 0
    assert abs(1 - kept.mean() - 0.3) < 0.01
    assert np.allclose(y[kept], 1 / 0.7)
    assert abs(y.mean() - 1) < 0.02  # expectation preserved
    drop.eval()
    assert np.array_equal(drop(x).data, x.data)
    with pytest.raises(ValueError):
        nn.Dropout(1.5)


def test_batchnorm_input_checks_name_the_shapes():
    with pytest.raises(ShapeError, match=r"BatchNorm2d.*\(2, 3, 4\)"):
        nn.BatchNorm2d(3)(minidl.randn(2, 3, 4))
    with pytest.raises(ShapeError, match=r"\(2, 5, 4, 4\) has 5 channels.*num_features=3"):
        nn.BatchNorm2d(3)(minidl.randn(2, 5, 4, 4))
    with pytest.raises(ShapeError, match=r"BatchNorm1d.*\(N, C=3\).*\(2, 3, 4\).*not supported"):
        nn.BatchNorm1d(3)(minidl.randn(2, 3, 4))
    with pytest.raises(ShapeError, match=r"BatchNorm1d.*4 features.*num_features=3"):
        nn.BatchNorm1d(3)(minidl.randn(2, 4))
    bn = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(minidl.randn(1, 3))
    assert bn.num_batches_tracked.data == 0  # a rejected batch is not counted
    bn.eval()
    assert bn(minidl.randn(1, 3)).shape == (1, 3)  # a single sample is fine in eval


# ------------------------------------------------------------------------- vs torch.nn layers

def _torch_pair(torch, ours, theirs, dtype):
    """Copy our weights into the torch layer through the state dicts; the reverse
    direction (torch -> ours) is exercised by loading torch's dict back."""
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return theirs.to(getattr(torch, np.dtype(dtype).name))


def _compare_forward_backward(torch, ours, theirs, x_np, dtype, seed=0):
    x = minidl.Tensor(x_np, requires_grad=True)
    tx = torch.from_numpy(x_np.copy()).requires_grad_(True)
    y, ty = ours(x), theirs(tx)
    assert y.dtype == dtype
    assert_close(y, ty.detach().numpy(), dtype)
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(dtype)
    y.backward(dy)
    ty.backward(torch.from_numpy(dy))
    assert_close(x.grad, tx.grad.numpy(), dtype)
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.grad, theirs_params[name].grad.numpy(), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,bias", [((1, 7), True), ((5, 7), False), ((2, 3, 7), True)])
def test_linear_matches_torch(shape, bias, dtype):
    torch = pytest.importorskip("torch")
    ours = nn.Linear(7, 4, bias=bias).to(dtype)
    theirs = _torch_pair(torch, ours, torch.nn.Linear(7, 4, bias=bias), dtype)
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    _compare_forward_backward(torch, ours, theirs, x, dtype)


CONV_CASES = [  # (N, C, H, W), out_channels, kwargs
    ((1, 1, 5, 5), 1, dict(kernel_size=3)),
    ((2, 3, 7, 6), 4, dict(kernel_size=3, padding=1, bias=False)),
    ((3, 4, 9, 8), 6, dict(kernel_size=(3, 2), stride=2, padding=(1, 0))),
    ((2, 4, 8, 7), 4, dict(kernel_size=3, dilation=2, groups=2, padding=2)),
    ((1, 2, 6, 6), 3, dict(kernel_size=1, stride=(2, 1))),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xshape,out,kwargs", CONV_CASES)
def test_conv2d_matches_torch(xshape, out, kwargs, dtype):
    torch = pytest.importorskip("torch")
    ours = nn.Conv2d(xshape[1], out, **kwargs).to(dtype)
    theirs = _torch_pair(torch, ours, torch.nn.Conv2d(xshape[1], out, **kwargs), dtype)
    assert repr(ours) == repr(theirs)
    x = np.random.default_rng(2).standard_normal(xshape).astype(dtype)
    _compare_forward_backward(torch, ours, theirs, x, dtype)


BN_CASES = [  # layer, input shape, kwargs
    ("BatchNorm1d", (4, 3), {}),
    ("BatchNorm1d", (2, 1), dict(momentum=0.3)),
    ("BatchNorm1d", (5, 2), dict(momentum=None)),
    ("BatchNorm2d", (2, 3, 4, 5), {}),
    ("BatchNorm2d", (1, 1, 3, 3), dict(eps=1e-3)),
    ("BatchNorm2d", (3, 2, 3, 1), dict(affine=False)),
    ("BatchNorm2d", (2, 2, 3, 3), dict(bias=False)),
    ("BatchNorm2d", (2, 3, 2, 2), dict(track_running_stats=False)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layer,shape,kwargs", BN_CASES)
def test_batchnorm_matches_torch_over_training_steps_and_in_eval(layer, shape, kwargs, dtype):
    torch = pytest.importorskip("torch")
    tol = 1e-5 if dtype == np.float32 else 1e-10
    c = shape[1]
    ours = getattr(nn, layer)(c, **kwargs).to(dtype)
    theirs = getattr(torch.nn, layer)(c, **kwargs)
    rng = np.random.default_rng(3)
    if ours.affine:  # non-trivial affine parameters, copied into torch
        ours.weight.data[...] = rng.uniform(0.5, 1.5, c)
    if ours.bias is not None:
        ours.bias.data[...] = rng.standard_normal(c)
    theirs = _torch_pair(torch, ours, theirs, dtype)
    assert repr(ours) == repr(theirs)
    rng = np.random.default_rng(4)
    for step in range(4):
        # Batches with a nonzero mean and non-unit scale, so running stats move.
        x = (rng.standard_normal(shape) * 2 + 1.5).astype(dtype)
        _compare_forward_backward(torch, ours, theirs, x, dtype, seed=step)
        ours.zero_grad()
        theirs.zero_grad()
    for name, b in theirs.named_buffers():
        assert_close(getattr(ours, name), b.numpy(), dtype, tol)
    ours.eval()
    theirs.eval()
    x = (rng.standard_normal(shape) * 2 + 1.5).astype(dtype)
    _compare_forward_backward(torch, ours, theirs, x, dtype, seed=9)


POOL_CASES = [  # layer, args, kwargs, input shape
    ("MaxPool2d", (2,), {}, (2, 3, 6, 7)),
    ("MaxPool2d", (3,), dict(stride=2, padding=1, ceil_mode=True), (1, 2, 7, 8)),
    ("AvgPool2d", (2,), {}, (2, 1, 5, 6)),
    ("AvgPool2d", (3,), dict(stride=2, padding=1, count_include_pad=False), (2, 2, 7, 5)),
    ("AvgPool2d", ((3, 2),), dict(stride=1, ceil_mode=True), (1, 3, 4, 4)),
    ("AdaptiveAvgPool2d", (1,), {}, (3, 4, 5, 3)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layer,args,kwargs,shape", POOL_CASES)
def test_pooling_matches_torch(layer, args, kwargs, shape, dtype):
    torch = pytest.importorskip("torch")
    ours = getattr(nn, layer)(*args, **kwargs)
    theirs = getattr(torch.nn, layer)(*args, **kwargs)
    assert repr(ours) == repr(theirs)
    x = np.random.default_rng(5).standard_normal(shape).astype(dtype)
    _compare_forward_backward(torch, ours, theirs, x, dtype)


@pytest.mark.parametrize("layer", ["ReLU", "Sigmoid", "Tanh", "Flatten", "Identity"])
def test_activation_layers_match_torch(layer):
    torch = pytest.importorskip("torch")
    ours, theirs = getattr(nn, layer)(), getattr(torch.nn, layer)()
    assert repr(ours) == repr(theirs)
    x = np.random.default_rng(6).standard_normal((3, 2, 4)).astype(np.float32)
    _compare_forward_backward(torch, ours, theirs, x, np.float32)


def test_small_cnn_loads_torch_weights_and_matches_training_step():
    """A whole model: the dotted names line up with torch's, so a torch state_dict loads
    as is, and one training-mode forward/backward agrees."""
    torch = pytest.importorskip("torch")

    def build(lib):
        return lib.Sequential(lib.Conv2d(2, 4, 3, padding=1), lib.BatchNorm2d(4), lib.ReLU(),
                              lib.MaxPool2d(2), lib.Conv2d(4, 6, 3, bias=False),
                              lib.BatchNorm2d(6), lib.Tanh(), lib.AdaptiveAvgPool2d(1),
                              lib.Flatten(), lib.Dropout(0.0), lib.Linear(6, 3))

    ours, theirs = build(nn), build(torch.nn)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = np.random.default_rng(7).standard_normal((3, 2, 8, 8)).astype(np.float32)
    _compare_forward_backward(torch, ours, theirs, x, np.float32)
    for k, v in theirs.state_dict().items():
        assert_close(ours.state_dict()[k], v.numpy(), np.float32, 1e-5)


def test_loss_modules_match_functional():
    import minidl as md
    from minidl import nn
    logits, target = md.randn(5, 3), md.tensor(np.array([0, 2, 1, 1, 0]))
    assert nn.CrossEntropyLoss()(logits, target).item() == pytest.approx(
        nn.functional.cross_entropy(logits, target).item())
    a, b = md.randn(4, 2), md.randn(4, 2)
    assert nn.MSELoss(reduction="sum")(a, b).item() == pytest.approx(
        float(((a.data - b.data) ** 2).sum()), rel=1e-6)
    assert repr(nn.MSELoss(reduction="sum")) == "MSELoss(reduction='sum')"


def test_batchnorm_eval_output_is_independent_of_the_batch():
    import minidl as md
    from minidl import nn
    md.manual_seed(0)
    for bn, shape in ((nn.BatchNorm1d(6), (9, 6)), (nn.BatchNorm2d(3), (5, 3, 4, 4))):
        for _ in range(3):  # some running statistics
            bn(md.randn(*shape) * 3 + 1)
        bn.eval()
        x = md.randn(*shape)
        whole = bn(x).data
        for i in range(shape[0]):
            alone = bn(x[i:i + 1]).data
            np.testing.assert_allclose(alone[0], whole[i], rtol=1e-6, atol=1e-6)
        other = md.randn(*shape) * 10  # a very different batch around it
        mixed = bn(md.concatenate([x[:1], other])).data
        np.testing.assert_allclose(mixed[0], whole[0], rtol=1e-6, atol=1e-6)
