"""The CUDA backend (kernels/cuda, minidl/cuda.py) against kernels/reference, NumPy and
the CPU backend. Without a GPU these run on numba-cuda's simulator (each CUDA thread a
Python thread), so every shape is tiny. On a GPU machine run them on the hardware with
NUMBA_ENABLE_CUDASIM=0 (benchmarks/cuda_check.sh)."""
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")  # read when numba.cuda is first imported

import numpy as np
import pytest

import minidl.kernels.reference as ref
import minidl
from minidl import nn, optim
from minidl.models import mlp

pytest.importorskip("numba_cuda", reason="numba-cuda is not installed (pip install "
                                         "'minidl[cuda]')")
if not minidl.cuda.is_available():
    pytest.skip(f"CUDA unusable: {minidl.cuda.unavailable_reason()}", allow_module_level=True)

from minidl.kernels import cuda as kc  # noqa: E402
from minidl.kernels.cuda.array import ALLOCATOR, CudaArray, DeviceMismatchError  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _fast_simulator_threads():
    """The simulator runs each CUDA thread as a Python thread and meets them at every
    syncthreads(): a short GIL switch interval makes those barriers 2-3x cheaper."""
    import sys
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(old)


# Tests of the simulator itself, or that the shapes here reach past the tiles that the
# kernels use on the simulator (the GPU's tiles are larger).
simulator_only = pytest.mark.skipif(not minidl.cuda.is_simulator(),
                                    reason="about the simulator's own tiles and threads")
# Shapes past the GPU's tiles and blocks: seconds on a GPU, far too slow on the simulator.
hardware_only = pytest.mark.skipif(minidl.cuda.is_simulator(),
                                   reason="shapes sized to the GPU's tiles")


def dev(a):
    return CudaArray.from_host(np.asarray(a))


def close(got, want, tol=1e-12):
    got = got.to_host() if isinstance(got, CudaArray) else np.asarray(got)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# ---- devices ------------------------------------------------------------------------

def test_device_api_and_host_copies():
    assert minidl.cuda.is_available() and minidl.cuda.unavailable_reason() is None
    assert minidl.device("cuda:0") == "cuda" and repr(minidl.device("cuda")) == \
        "device(type='cuda')"
    with pytest.raises(ValueError, match="only one GPU"):
        minidl.device("cuda:1")
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        minidl.device("tpu")
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = minidl.tensor(a, device="cuda")
    assert t.device == "cuda" and isinstance(t.data, CudaArray) and t.shape == (2, 3)
    assert t.dtype == np.float32
    np.testing.assert_array_equal(t.numpy(), a)
    back = t.cpu()
    assert back.device == "cpu" and isinstance(back.data, np.ndarray)
    np.testing.assert_array_equal(back.data, a)
    assert t.sum().item() == 15.0
    assert t.to("cuda") is t and back.cuda().device == "cuda"
    assert "device='cuda'" in repr(t)
    with pytest.raises(TypeError, match="cpu"):
        np.asarray(t)  # implicit host copies are refused, as in PyTorch


def test_small_grids_do_not_warn_at_every_launch():
    """A 3-element add is a 1-block grid on purpose; numba-cuda's low-occupancy warning
    (one per launch, on a GPU) is off unless NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS is set."""
    import warnings
    from numba.cuda.core import config
    assert config.CUDA_LOW_OCCUPANCY_WARNINGS == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal((dev(np.ones(3)) + 1).to_host(), [2.0, 2.0, 2.0])


def test_to_is_differentiable_both_ways():
    x = minidl.tensor([[1.0, -2.0], [3.0, 4.0]], dtype=np.float64, requires_grad=True)
    y = (x.to("cuda") * 3.0).relu().sum()
    assert y.device == "cuda"
    y.backward()
    assert x.grad.device == "cpu"
    np.testing.assert_array_equal(x.grad.data, [[3.0, 0.0], [3.0, 3.0]])


def test_channels_last_on_cuda_is_refused_clearly():
    """The CUDA kernels take NCHW: asking for channels_last on the GPU raises, naming the
    tensor; it never returns a tensor claiming a layout it does not have."""
    rng = np.random.default_rng(0)
    x = minidl.tensor(rng.standard_normal((2, 3, 4, 5)).astype(np.float32), device="cuda")
    assert x.is_contiguous() and not x.is_contiguous(memory_format=minidl.channels_last)
    with pytest.raises(NotImplementedError, match=r"cuda tensor of shape \(2, 3, 4, 5\)"):
        x.to(memory_format=minidl.channels_last)
    assert x.to(memory_format=minidl.contiguous_format) is x
    # one channel: both layouts are the same memory, as in PyTorch
    one = minidl.tensor(rng.standard_normal((2, 1, 4, 5)), device="cuda")
    assert one.to(memory_format=minidl.channels_last) is one
    assert one.is_contiguous(memory_format=minidl.channels_last)
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(NotImplementedError, match="Conv2d on cuda"):
        conv.to("cuda", memory_format=minidl.channels_last)
    conv.to("cuda")
    with pytest.raises(NotImplementedError, match="Conv2d on cuda"):
        conv.to(memory_format=minidl.channels_last)
    assert conv.weight.device == "cuda"  # nothing was changed by the refused calls
    # a channels_last CPU model moves to the GPU as NCHW, same values
    cpu = nn.Conv2d(3, 4, 3).to(memory_format=minidl.channels_last)
    w = cpu.weight.detach().numpy().copy()
    cpu.to("cuda")
    np.testing.assert_array_equal(cpu.weight.detach().numpy(), w)
    want = nn.functional.conv2d(minidl.tensor(x.numpy()), minidl.tensor(w),
                                cpu.bias.detach().cpu())
    close(cpu(x).data, want.data, 1e-5)


def test_what_cuda_does_not_do_is_refused_clearly():
    """Integer-array and mask indexing and batched matmul have no CUDA kernels: each one
    raises NotImplementedError saying what is missing (an ndarray index used to fail in
    an unrelated `key == ()` comparison with a broadcasting ValueError)."""
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = minidl.tensor(a, device="cuda")
    for key in (np.array([0, 2]), [0, 2], a > 5, (slice(None), np.array([1, 3]))):
        with pytest.raises(NotImplementedError, match="indices is not implemented"):
            t[key]
    np.testing.assert_array_equal(t[1:3, ::2].numpy(), a[1:3, ::2])  # basic indexing works
    np.testing.assert_array_equal(t[None, ..., 1].numpy(), a[None, ..., 1])
    b = minidl.tensor(np.ones((2, 4, 5), np.float32), device="cuda")
    with pytest.raises(NotImplementedError, match=r"batched products \(2, 3, 4\) @ \(2, 4, 5\)"):
        minidl.tensor(np.ones((2, 3, 4), np.float32), device="cuda") @ b


def test_mixing_devices_names_both():
    a = minidl.tensor(np.ones((2, 3), np.float32), device="cuda")
    b = minidl.tensor(np.ones((2, 3), np.float32))
    for op in (lambda: a + b, lambda: b * a, lambda: a @ b.T, lambda: b @ a.T):
        with pytest.raises(RuntimeError, match="cuda and cpu"):
            op()
    bn = nn.BatchNorm1d(3)  # parameters on the CPU, input on the GPU
    with pytest.raises(RuntimeError, match="cuda and cpu|cpu and cuda"):
        bn(a)
    # a 0-dim CPU value mixes with a GPU tensor, as in PyTorch
    close((a * minidl.tensor(2.0)).data, np.full((2, 3), 2.0))


# ---- kernels against NumPy / minidl.kernels.reference ----------------------------------------

@pytest.mark.parametrize("sa,sb", [((3, 5), (3, 5)), ((3, 5), (5,)), ((4, 1, 3), (2, 1)),
                                   ((1,), (2, 3)), ((), (3,))])
def test_elementwise_broadcasting(rng, sa, sb):
    a = rng.standard_normal(sa) + 2.5
    b = rng.standard_normal(sb) + 2.5
    da, db = dev(a), dev(b)
    for f in (np.add, np.subtract, np.multiply, np.divide, np.maximum, np.minimum,
              np.power, np.greater, np.equal):
        close(f(da, db), f(a, b))
    close(da * 0.5 - 1, a * 0.5 - 1)
    for v in (2.5, 2, True):
        close(da > v, a > v)
        close(v <= da, v <= a)
    ints = np.arange(6).reshape(2, 3)
    close(dev(ints) > 2.5, ints > 2.5)
    close(dev(ints) / 4, ints / 4)
    close(dev(ints) * 2, ints * 2)
    assert (dev(ints) * 2).dtype == ints.dtype
    close(2.0 / db, 2.0 / b)
    for f in (np.exp, np.log, np.sqrt, np.negative, np.abs, np.tanh, np.sign):
        close(f(da), f(a))
    c = da.copy()
    c += db if np.broadcast_shapes(sa, sb) == sa else 1.0
    close(c, a + (b if np.broadcast_shapes(sa, sb) == sa else 1.0))
    assert (da * np.float32(2)).dtype == a.dtype
    assert dev(a.astype(np.float32)).__mul__(0.5).dtype == np.float32


def test_elementwise_bad_shapes_raise():
    with pytest.raises(ValueError):
        dev(np.ones((2, 3))) + dev(np.ones((4,)))
    with pytest.raises(DeviceMismatchError, match="cuda and cpu"):
        dev(np.ones(3)) + np.ones(3)


@pytest.mark.parametrize("shape,axis", [((3, 5), 1), ((2, 3, 4), (0, 2)), ((1, 5), 0),
                                        ((21,), None),
                                        # two passes (few outputs, many elements each):
                                        ((3, 50), None), ((2, 45), 1), ((41, 2), 0),
                                        ((5, 3, 7), (0, 2)),
                                        # a thread per output (few elements each):
                                        ((7, 3), 1), ((2, 9), 0), ((4, 1, 3), (1, 2))])
def test_reductions(rng, shape, axis):
    a = rng.standard_normal(shape)
    d = dev(a)
    for keep in (False, True):
        close(d.sum(axis=axis, keepdims=keep), a.sum(axis=axis, keepdims=keep))
        close(d.mean(axis=axis, keepdims=keep), a.mean(axis=axis, keepdims=keep))
        close(d.max(axis=axis, keepdims=keep), a.max(axis=axis, keepdims=keep))
        close(d.min(axis=axis, keepdims=keep), a.min(axis=axis, keepdims=keep))
    assert dev(a > 0).sum().item() == (a > 0).sum()
    nan = a.copy()
    nan.flat[a.size // 2] = np.nan
    for f in ("sum", "max", "min"):
        np.testing.assert_array_equal(np.isnan(getattr(dev(nan), f)(axis=axis).to_host()),
                                      np.isnan(getattr(nan, f)(axis=axis)))


@hardware_only
@pytest.mark.parametrize("shape,axis", [((3, 300001), 1), ((70001, 5), 0), ((1000, 999), None),
                                        ((2, 33), 1), ((40, 3, 5000), (0, 2))])
def test_reductions_past_the_gpu_blocks(rng, shape, axis):
    test_reductions(rng, shape, axis)


@simulator_only
def test_reduction_paths_cover_the_shapes():
    """The two-pass and thread-per-output paths of kernels/cuda/reduction.py are taken
    by the shapes of test_reductions that ask for them."""
    from minidl.kernels.cuda.reduction import FILL_BLOCKS, SMALL, partial_blocks
    assert partial_blocks(1, 150) > 1 and partial_blocks(2, 45) > 1
    assert partial_blocks(2, 41) > 1 and partial_blocks(3, 35) > 1
    assert partial_blocks(1, 21) == 1 and partial_blocks(100, 10 ** 6) == 1
    assert 1 < partial_blocks(1, 10 ** 9) <= FILL_BLOCKS
    assert 3 <= SMALL < 5  # the last three shapes of test_reductions, and not (3, 5)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (5, 7, 3), (6, 0, 2)])
def test_matmul_tiled(rng, m, k, n):
    for dt, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        a = rng.standard_normal((m, k)).astype(dt)
        b = rng.standard_normal((k, n)).astype(dt)
        close(dev(a) @ dev(b), a @ b, tol)
        close(dev(a).T @ dev(a), a.T @ a, tol)
    a = rng.standard_normal((m, k))
    v = rng.standard_normal(k)
    close(dev(a) @ dev(v), a @ v)
    with pytest.raises(ValueError, match="do not fit"):
        dev(a) @ dev(np.ones((k + 1, 2)))


def test_argmax_on_device(rng):
    a = rng.standard_normal((4, 5))
    t = minidl.tensor(a, device="cuda")
    got = minidl.argmax(t, axis=1)
    assert got.device == "cuda"
    np.testing.assert_array_equal(got.numpy(), a.argmax(axis=1))


def test_transpose_broadcast_to(rng):
    a = rng.standard_normal((2, 3, 4))
    close(dev(a).transpose(2, 0, 1), a.transpose(2, 0, 1))
    close(np.broadcast_to(dev(a[:1]), (5, 3, 4)), np.broadcast_to(a[:1], (5, 3, 4)))
    close(np.expand_dims(dev(a), 1), np.expand_dims(a, 1))
    close(dev(a)[1], a[1])


@pytest.mark.parametrize("act", ["identity", "relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 2, 2)])
def test_bias_act_and_backward(rng, act, shape):
    x = rng.standard_normal(shape)
    b = rng.standard_normal(shape[1])
    for bias in (None, b):
        close(kc.bias_act_forward(dev(x), None if bias is None else dev(bias), act),
              ref.bias_act_forward(x, bias, act))
    y = ref.bias_act_forward(x, None, act)
    dy = rng.standard_normal(shape)
    close(kc.act_backward(dev(dy), dev(y), act), ref.act_backward(dy, y, act))


@pytest.mark.parametrize("shape", [(6, 3), (1 + 1, 5), (3, 2, 3, 2), (2, 3, 1, 1)])
def test_batchnorm_kernels(rng, shape):
    c = shape[1]
    x = rng.standard_normal(shape) * 3 + 5
    g, b = rng.standard_normal(c), rng.standard_normal(c)
    dy = rng.standard_normal(shape)
    y, mean, var = kc.batch_norm_train_forward(dev(x), dev(g), dev(b), 1e-5)
    ry, rmean, rvar = ref.batch_norm_train_forward(x, g, b, 1e-5)
    close(y, ry, 1e-9)
    close(mean, rmean, 1e-9)
    close(var, rvar, 1e-9)
    for got, want in zip(kc.batch_norm_train_backward(dev(dy), dev(x), dev(g), mean, var, 1e-5),
                         ref.batch_norm_train_backward(dy, x, g, rmean, rvar, 1e-5)):
        close(got, want, 1e-9)
    rm, rv = rng.standard_normal(c), rng.random(c) + 0.5
    close(kc.batch_norm_eval_forward(dev(x), dev(g), dev(b), dev(rm), dev(rv), 1e-5),
          ref.batch_norm_eval_forward(x, g, b, rm, rv, 1e-5), 1e-9)
    for got, want in zip(kc.batch_norm_eval_backward(dev(dy), dev(x), dev(g), dev(rm), dev(rv),
                                                     1e-5),
                         ref.batch_norm_eval_backward(dy, x, g, rm, rv, 1e-5)):
        close(got, want, 1e-9)
    # a fused ReLU (relu=True, relu_out=...): the same contract as the CPU kernels
    y, mean, var = kc.batch_norm_train_forward(dev(x - 5), dev(g), dev(b), 1e-5, relu=True)
    ry, rmean, rvar = ref.batch_norm_train_forward(x - 5, g, b, 1e-5, relu=True)
    close(y, ry, 1e-9)
    for got, want in zip(kc.batch_norm_train_backward(dev(dy), dev(x - 5), dev(g), mean, var,
                                                      1e-5, relu_out=y),
                         ref.batch_norm_train_backward(dy, x - 5, g, rmean, rvar, 1e-5,
                                                       relu_out=ry)):
        close(got, want, 1e-9)
    y = kc.batch_norm_eval_forward(dev(x), dev(g), dev(b), dev(rm), dev(rv), 1e-5, relu=True)
    ry = ref.batch_norm_eval_forward(x, g, b, rm, rv, 1e-5, relu=True)
    close(y, ry, 1e-9)
    for got, want in zip(kc.batch_norm_eval_backward(dev(dy), dev(x), dev(g), dev(rm), dev(rv),
                                                     1e-5, relu_out=y),
                         ref.batch_norm_eval_backward(dy, x, g, rm, rv, 1e-5, relu_out=ry)):
        close(got, want, 1e-9)


def test_parameters_converted_on_the_fly_are_not_overwritten(rng):
    """float32 x with float64 (host) gamma, beta and statistics: each is converted into a
    temporary, and every temporary must live until its kernel has run (a temporary freed
    early hands its buffer to the next conversion, so gamma would read beta's values)."""
    x = (rng.standard_normal((4, 3, 2, 2)) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    g, b = rng.standard_normal(3) + 2, rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.random(3) + 0.5
    y, mean, var = kc.batch_norm_train_forward(dev(x), g, b, 1e-5)
    ry, rmean, rvar = ref.batch_norm_train_forward(x, g.astype(np.float32),
                                                   b.astype(np.float32), 1e-5)
    close(y, ry, 1e-5)
    for got, want in zip(kc.batch_norm_train_backward(dy, dev(x), g, mean, var, 1e-5),
                         ref.batch_norm_train_backward(dy, x, g.astype(np.float32), rmean,
                                                       rvar, 1e-5)):
        close(got, want, 1e-4)
    close(kc.batch_norm_eval_forward(dev(x), g, b, rm, rv, 1e-5),
          ref.batch_norm_eval_forward(x, g, b, rm, rv, 1e-5), 1e-5)
    p, grad = dev(np.ones(5, np.float32)), rng.standard_normal(5)
    kc.sgd_step(p, grad, None, 0.5, 0.0, 0.0, 0.0, False, True)
    close(p, 1 - 0.5 * grad.astype(np.float32), 1e-6)


def test_where_with_operands_made_on_the_fly():
    c = dev(np.array([True, False, True]))
    close(np.where(c, 1.0, 2.0), [1.0, 2.0, 1.0])
    close(np.where(c, dev(np.array([1, 2, 3], np.int32)), 7.5), [1.0, 7.5, 3.0])
    close(np.where(dev(np.array([[True], [False]])), dev(np.arange(3.0)), -1.0),
          [[0.0, 1.0, 2.0], [-1.0, -1.0, -1.0]])


@simulator_only
def test_simulated_threads_of_a_block_share_one_shared_array():
    """The simulator creates a block's shared arrays lazily, on the first call from each
    source line. Without the lock that kernels/cuda/_simulator.py adds, threads arriving
    together could each create their own array, and a block reduction would mix them
    (batch norm and sums failed about one run in ten)."""
    import sys
    import threading
    from numba.cuda.simulator.kernelapi import FakeCUDAShared
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # unpatched, about one round in three goes wrong
    try:
        for _ in range(100):
            shared, barrier, got = FakeCUDAShared(0), threading.Barrier(8), []

            def thread(shared=shared, barrier=barrier, got=got):
                barrier.wait()
                got.append(shared.array(4, np.float64))

            threads = [threading.Thread(target=thread) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(got) == 8 and all(a is got[0] for a in got)
    finally:
        sys.setswitchinterval(interval)
    a = np.arange(1.0, 65.0).reshape(8, 8)
    close(dev(a).sum(axis=1), a.sum(axis=1))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_cpu(rng, reduction):
    logits = rng.standard_normal((5, 4)) * 3
    target = np.array([0, 3, 1, 1, 2])
    outs = []
    for device in ("cpu", "cuda"):
        x = minidl.tensor(logits, device=device, requires_grad=True)
        t = minidl.tensor(target, device=device)
        loss = minidl.cross_entropy(x, t, reduction=reduction)
        (loss.sum() if reduction == "none" else loss).backward()
        outs.append((loss.detach().numpy(),
                     x.grad.numpy()))
    close(outs[1][0], outs[0][0])
    close(outs[1][1], outs[0][1])
    torch = pytest.importorskip("torch")
    want = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(target),
                                             reduction=reduction).numpy()
    close(outs[1][0], want)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        minidl.cross_entropy(minidl.tensor(logits, device="cuda"),
                             minidl.tensor([0, 4, 1, 1, 2], device="cuda"))


def test_batchnorm_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 3, 2, 2))
    g = rng.standard_normal(3)
    y, _, _ = kc.batch_norm_train_forward(dev(x), dev(g), dev(np.zeros(3)), 1e-5)
    want = torch.nn.functional.batch_norm(torch.tensor(x), None, None, torch.tensor(g),
                                          torch.zeros(3, dtype=torch.float64), True)
    close(y, want.numpy(), 1e-9)


# ---- training on the GPU equals training on the CPU ------------------------------------

def _mlp_steps(device, bn, opt_name, steps=2, dtype=np.float64):
    minidl.manual_seed(0)
    model = mlp(in_features=5, hidden=(4, 3), num_classes=3, bn=bn,
                                  activation="sigmoid", init_std=0.5)
    model.to(dtype).to(device)
    make = {"sgd": lambda ps: optim.SGD(ps, lr=0.5, momentum=0.9, weight_decay=1e-3),
            "nesterov": lambda ps: optim.SGD(ps, lr=0.5, momentum=0.9, nesterov=True),
            "adam": lambda ps: optim.Adam(ps, lr=0.05),
            "adamw_amsgrad": lambda ps: optim.AdamW(ps, lr=0.05, amsgrad=True),
            "rmsprop": lambda ps: optim.RMSprop(ps, lr=0.01),
            "rmsprop_centered": lambda ps: optim.RMSprop(ps, lr=0.01, centered=True,
                                                         momentum=0.5, weight_decay=1e-2)}
    opt = make[opt_name](model.parameters())
    rng = np.random.default_rng(7)
    losses = []
    for _ in range(steps):
        x = minidl.tensor(rng.standard_normal((4, 5)).astype(dtype), device=device)
        y = minidl.tensor(rng.integers(0, 3, 4), device=device)
        opt.zero_grad()
        loss = minidl.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, opt, losses


@pytest.mark.slow
@pytest.mark.parametrize("bn,opt_name", [(False, "sgd"), (True, "sgd"), (True, "adam"),
                                         (False, "rmsprop"), (False, "nesterov"),
                                         (False, "adamw_amsgrad"), (True, "rmsprop_centered")])
def test_mlp_training_steps_match_cpu(bn, opt_name):
    cm, copt, closs = _mlp_steps("cpu", bn, opt_name)
    gm, gopt, gloss = _mlp_steps("cuda", bn, opt_name)
    np.testing.assert_allclose(gloss, closs, rtol=1e-10)
    for (name, a), (_, b) in zip(cm.state_dict().items(), gm.state_dict().items()):
        assert isinstance(b, np.ndarray), name  # a GPU state_dict holds host arrays
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12, err_msg=name)
    for p in gm.parameters():
        assert p.device == "cuda" and p.grad.device == "cuda"
        for v in gopt.state[p].values():
            assert not isinstance(v, np.ndarray)  # optimizer state lives with its param
    if bn:
        bufs = [b for b in gm.buffers() if b.dtype.kind == "f"]
        assert bufs and all(b.device == "cuda" for b in bufs)


@pytest.mark.slow
def test_mlp_float32_training_close_to_cpu():
    _, _, closs = _mlp_steps("cpu", True, "sgd", dtype=np.float32)
    _, _, gloss = _mlp_steps("cuda", True, "sgd", dtype=np.float32)
    np.testing.assert_allclose(gloss, closs, rtol=1e-5)


@pytest.mark.slow
def test_checkpoints_move_between_devices():
    gm, gopt, _ = _mlp_steps("cuda", True, "sgd", steps=1)
    sd = gm.state_dict()
    fresh_cpu = mlp(in_features=5, hidden=(4, 3), num_classes=3, bn=True)
    fresh_cpu.to(np.float64).load_state_dict(sd)
    fresh_gpu = mlp(in_features=5, hidden=(4, 3), num_classes=3, bn=True)
    fresh_gpu.to(np.float64).to("cuda").load_state_dict(sd)
    x = np.random.default_rng(3).standard_normal((5, 5))
    fresh_cpu.eval(), fresh_gpu.eval(), gm.eval()
    with minidl.no_grad():
        want = gm(minidl.tensor(x, device="cuda")).numpy()
        np.testing.assert_allclose(fresh_cpu(minidl.tensor(x)).numpy(), want, rtol=1e-12)
        np.testing.assert_allclose(fresh_gpu(minidl.tensor(x, device="cuda")).numpy(), want,
                                   rtol=1e-12)
    osd = gopt.state_dict()
    assert all(isinstance(v, np.ndarray) for s in osd["state"].values() for v in s.values()
               if not np.isscalar(v))
    opt2 = optim.SGD(fresh_gpu.parameters(), lr=0.5, momentum=0.9)
    opt2.load_state_dict(osd)
    assert all(v.device == "cuda" for s in opt2.state.values() for v in s.values())


@pytest.mark.slow
def test_second_identical_step_allocates_nothing_from_the_driver():
    model, opt, _ = _mlp_steps("cuda", True, "sgd", steps=1)
    rng = np.random.default_rng(1)
    x = minidl.tensor(rng.standard_normal((4, 5)), device="cuda")
    y = minidl.tensor(rng.integers(0, 3, 4), device="cuda")

    def step():
        opt.zero_grad()
        loss = minidl.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    step()
    before = ALLOCATOR.driver_allocations
    step()
    assert ALLOCATOR.driver_allocations == before
    assert minidl.cuda.memory_stats()["cached_bytes"] > 0


def test_a_buffer_freed_in_a_reference_cycle_is_not_handed_out_dead(monkeypatch):
    """numba-cuda frees a buffer's memory from a weakref callback when the buffer's last
    pointer object dies. When a reference cycle holding an array is collected, Python
    runs those callbacks before the `_Block.__del__` that returns the buffer to a free
    list, so a buffer reachable only through its block came back with freed memory
    (ReferenceError on a GPU). Buffers here stand in for numba-cuda's, with the same
    callback."""
    import gc
    import weakref
    from minidl.kernels.cuda import array as arr

    class Pointer:
        pass

    class Buffer:
        def __init__(self, n, dtype):
            self.size, self.dtype = n, np.dtype(dtype)
            self.nbytes = n * self.dtype.itemsize
            self.pointer, self.freed = Pointer(), []
            weakref.finalize(self.pointer, self.freed.append, True)

    allocator = arr.CachingAllocator()
    monkeypatch.setattr(arr, "ALLOCATOR", allocator)
    monkeypatch.setattr(arr.cuda, "device_array", lambda n, dtype: Buffer(n, dtype))
    gc.collect()  # other tests' garbage goes back to the real allocator first
    gc.disable()
    try:
        cycle = [arr._Block(10, np.dtype(np.float32))]
        cycle.append(cycle)
        del cycle
        gc.collect()
    finally:
        gc.enable()
    buf = allocator.allocate(10, np.dtype(np.float32))
    assert allocator.driver_allocations == 1 and not buf.freed  # reused, memory alive
    allocator.release(buf)
    del buf
    allocator.empty_cache()
    assert not allocator.owned and not allocator.free


CONV_CASES = [  # (x shape, w shape, stride, padding, dilation, groups)
    ((2, 3, 5, 4), (4, 3, 3, 2), (1, 1), (1, 0), (1, 1), 1),
    ((1, 4, 6, 5), (2, 2, 3, 3), (2, 1), (1, 2), (1, 2), 2),
    ((1, 1, 3, 3), (1, 1, 1, 1), (1, 1), (0, 0), (1, 1), 1),
    # more output channels (Kg = 9), input channels (Cg R S = 27) and pixels than one
    # block tile holds, none a multiple of it; stride 2 with padding
    ((1, 3, 5, 4), (9, 3, 3, 3), (2, 2), (1, 1), (1, 1), 1),
    # 1x1 with a long contraction (Cg = 13), batch 1, odd image
    ((1, 13, 3, 5), (9, 13, 1, 1), (1, 1), (0, 0), (1, 1), 1),
    # dilation 2 and padding 2 in both directions, stride 2 in one
    ((2, 2, 5, 6), (3, 2, 3, 2), (1, 2), (2, 2), (2, 2), 1),
    # depthwise (groups = C), kernel larger than the image with padding
    ((2, 3, 2, 3), (6, 1, 3, 3), (1, 1), (1, 1), (1, 1), 3),
    # two groups, each wider than a tile in output (Kg = 9) and input (Cg = 9) channels
    ((1, 18, 3, 3), (18, 9, 1, 2), (1, 1), (0, 1), (1, 1), 2),
]


@pytest.mark.parametrize("shape,wshape,stride,padding,dilation,groups", CONV_CASES)
@pytest.mark.parametrize("dt,tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_conv2d_kernels(rng, shape, wshape, stride, padding, dilation, groups, dt, tol):
    """The tiled implicit-GEMM kernels (kernels/cuda/conv2d.py) against the reference."""
    _check_conv2d(rng, shape, wshape, stride, padding, dilation, groups, dt, tol)


GPU_CONV_CASES = [
    # pixels, output channels and contraction past one GPU tile (BM = BN = 64), none a
    # multiple of it; backward-weight split over the contraction
    ((3, 70, 19, 23), (130, 70, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    # groups, stride and dilation in one direction each, a 3x1 kernel
    ((2, 64, 15, 17), (96, 32, 3, 1), (2, 1), (1, 0), (1, 2), 2),
    # a first layer: 3 channels, 7x7 stride 2
    ((1, 3, 64, 65), (66, 3, 7, 7), (2, 2), (3, 3), (1, 1), 1),
]


@hardware_only
@pytest.mark.parametrize("shape,wshape,stride,padding,dilation,groups", GPU_CONV_CASES)
def test_conv2d_kernels_past_the_gpu_tiles(rng, shape, wshape, stride, padding, dilation,
                                           groups):
    _check_conv2d(rng, shape, wshape, stride, padding, dilation, groups, np.float64, 1e-9)


def _check_conv2d(rng, shape, wshape, stride, padding, dilation, groups, dt, tol):
    x = rng.standard_normal(shape).astype(dt)
    w = rng.standard_normal(wshape).astype(dt)
    b = rng.standard_normal(wshape[0]).astype(dt)
    args = (stride, padding, dilation, groups)
    y = ref.conv2d_forward(x, w, b, *args)
    got = kc.conv2d_forward(dev(x), dev(w), dev(b), *args)
    assert got.dtype == dt and got.shape == y.shape
    close(got, y, tol)
    close(kc.conv2d_forward(dev(x), dev(w), None, *args), ref.conv2d_forward(x, w, None, *args),
          tol)
    dy = rng.standard_normal(y.shape).astype(dt)
    gx = kc.conv2d_backward_input(dev(dy), dev(w), shape, *args)
    assert gx.dtype == dt
    close(gx, ref.conv2d_backward_input(dy, w, shape, *args), tol)
    gw = kc.conv2d_backward_weight(dev(dy), dev(x), wshape, *args)
    assert gw.dtype == dt and gw.shape == wshape
    close(gw, ref.conv2d_backward_weight(dy, x, wshape, *args), tol)
    close(kc.conv2d_backward_bias(dev(dy)), ref.conv2d_backward_bias(dy), tol)


@simulator_only
def test_conv2d_tiles_and_splits_cover_the_cases():
    """The cases above reach past one block tile in every GEMM dimension and run
    backward-weight both whole and split over the contraction (split-K)."""
    from minidl.kernels.cuda import conv2d as cc
    dims = [kc._conv_dims(s, w, st, p, d, g) + (g,) for s, w, st, p, d, g in CONV_CASES]
    assert max(d[0] * d[8] * d[9] for d in dims) > cc.BM      # forward rows (pixels)
    assert max(d[16] for d in dims if d[17] > 1) > cc.BN       # output channels per group
    assert max(d[5] for d in dims if d[17] > 1) > cc.BN        # input channels per group
    assert max(d[5] * d[6] * d[7] for d in dims) > cc.BK       # contraction steps
    splits = [cc.weight_splits(d[:17], d[17]) for d in dims]
    assert min(s for s, _ in splits) == 1 and max(s for s, _ in splits) > 1
    for d, (s, chunk) in zip(dims, splits):
        L = d[0] * d[8] * d[9]
        assert chunk % cc.BK == 0 and (s - 1) * chunk < max(L, 1) <= s * chunk


def test_conv2d_empty_batch(rng):
    x, w = np.zeros((0, 2, 3, 3)), rng.standard_normal((3, 2, 2, 2))
    args = ((1, 1), (0, 0), (1, 1), 1)
    assert kc.conv2d_forward(dev(x), dev(w), None, *args).shape == (0, 3, 2, 2)
    stale = CudaArray.full(w.shape, 7.0, np.float64)  # its buffer goes back to the
    del stale                                          # allocator for the gradient to reuse
    close(kc.conv2d_backward_weight(dev(np.zeros((0, 3, 2, 2))), dev(x), w.shape, *args),
          np.zeros(w.shape))


def test_conv2d_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 4, 7, 5))
    w = rng.standard_normal((6, 2, 3, 2))
    args = ((2, 1), (1, 1), (1, 2), 2)
    want = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), None, *args).numpy()
    close(kc.conv2d_forward(dev(x), dev(w), None, *args), want, 1e-10)


@pytest.mark.parametrize("k,s,p,ceil", [((2, 2), (2, 2), (0, 0), False),
                                        ((3, 2), (2, 1), (1, 1), True),
                                        ((3, 3), (1, 1), (1, 1), False)])
def test_pooling_kernels(rng, k, s, p, ceil):
    x = rng.standard_normal((2, 2, 5, 4))
    x[0, 0, 1, 1] = x[0, 0, 1, 2]  # a tie: the first maximum wins
    y, arg = ref.max_pool2d_forward(x, k, s, p, ceil)
    gy, garg = kc.max_pool2d_forward(dev(x), k, s, p, ceil)
    close(gy, y)
    np.testing.assert_array_equal(garg.to_host(), arg)
    dy = rng.standard_normal(y.shape)
    close(kc.max_pool2d_backward(dev(dy), garg, x.shape), ref.max_pool2d_backward(dy, arg, x.shape))
    for cip in (True, False):
        ya = ref.avg_pool2d_forward(x, k, s, p, ceil, cip)
        close(kc.avg_pool2d_forward(dev(x), k, s, p, ceil, cip), ya)
        close(kc.avg_pool2d_backward(dev(dy), x.shape, k, s, p, ceil, cip),
              ref.avg_pool2d_backward(dy, x.shape, k, s, p, ceil, cip))
    close(kc.global_avg_pool2d_forward(dev(x)), ref.global_avg_pool2d_forward(x))
    g = rng.standard_normal((2, 2))
    close(kc.global_avg_pool2d_backward(dev(g), x.shape),
          ref.global_avg_pool2d_backward(g, x.shape))


def _cnn_steps(device, opt_name):
    minidl.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 2),
                          nn.AvgPool2d(2, stride=1, padding=1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    model.to(np.float64).to(device)
    opt = optim.Adam(model.parameters(), lr=0.05) if opt_name == "adam" else \
        optim.RMSprop(model.parameters(), lr=0.01, momentum=0.5)
    rng = np.random.default_rng(5)
    losses = []
    for _ in range(2):
        x = minidl.tensor(rng.standard_normal((2, 2, 4, 4)), device=device)
        y = minidl.tensor(rng.integers(0, 3, 2), device=device)
        opt.zero_grad()
        loss = minidl.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


@pytest.mark.slow
@pytest.mark.parametrize("opt_name", ["adam", "rmsprop"])
def test_cnn_training_steps_match_cpu(opt_name):
    cm, closs = _cnn_steps("cpu", opt_name)
    gm, gloss = _cnn_steps("cuda", opt_name)
    np.testing.assert_allclose(gloss, closs, rtol=1e-10)
    for (name, a), (_, b) in zip(cm.state_dict().items(), gm.state_dict().items()):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12, err_msg=name)


# ---- the command line and the trainer ----------------------------------------------------

@pytest.mark.slow
def test_trainer_on_cuda_evaluates_checkpoints_and_resumes(tmp_path):
    from minidl.data import DataLoader, TensorDataset
    from minidl.train import Trainer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 5)).astype(np.float32)
    y = rng.integers(0, 3, 12)

    def make():
        minidl.manual_seed(0)
        model = mlp(in_features=5, hidden=(4,), num_classes=3, bn=True).to("cuda")
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return Trainer(model, opt, DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True,
                                              seed=0),
                       eval_loader=DataLoader(TensorDataset(x, y), batch_size=6),
                       eval_every=2, checkpoint_every=2, out_dir=tmp_path, progress=False,
                       bn_eval="population", bn_stats_batches=2,
                       bn_stats_loader=DataLoader(TensorDataset(x, y), batch_size=4,
                                                  shuffle=True, seed=1),
                       device="cuda")
    first = make().fit(2)
    assert 0 <= first["history"][-1]["test_acc"] <= 1
    assert first["history"][-1]["bn_eval"] == "population"
    resumed = make().fit(3, resume=True)
    assert resumed["steps"] == 3
    assert all(p.device == "cuda" for p in make().model.parameters())


def test_device_cuda_without_cuda_is_one_clear_line(monkeypatch, tmp_path, capsys):
    from minidl.cli import main
    monkeypatch.setattr(minidl.cuda, "_probe", (False, "numba-cuda is not installed", False))
    for argv in (["figure1", "--device", "cuda", "--out", str(tmp_path / "f")],
                 ["train", "--device", "cuda", "--out", str(tmp_path / "t")],
                 ["ablation", "--device", "cuda", "--out", str(tmp_path / "a"), "--quick"]):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
        assert rc == 2, argv
        err = capsys.readouterr().err
        assert "--device cuda: CUDA is not available: numba-cuda is not installed" in err
        assert len(err.strip().splitlines()) == 1, err
    try:
        rc = main(["bench", "--device", "cuda", "--quick"])
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    assert "CUDA is not available: numba-cuda is not installed" in capsys.readouterr().err
    with pytest.raises(minidl.cuda.CudaUnavailableError, match="not installed"):
        minidl.tensor([1.0], device="cuda")
    assert "not available (numba-cuda is not installed)" in minidl.cuda.status()


@pytest.mark.slow
def test_bench_device_cuda_quick_runs(capsys):
    from minidl.cli import main
    assert main(["bench", "--device", "cuda", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "batch_norm_train_forward" in out and "Figure 1 MLP + BN" in out
    assert "numba-cuda launch of an empty kernel" in out


@pytest.mark.slow
def test_bench_device_cuda_times_every_row_against_torch(monkeypatch):
    """The PyTorch peer's code, run on the CPU here: every kernel row (backward passes
    too) and every training step gets a torch time."""
    pytest.importorskip("torch")
    from minidl.benchmarks import cuda as bench
    monkeypatch.setattr(bench, "TORCH_DEVICE", "cpu")
    kernels = bench.kernel_rows(quick=True, repeat=1)
    train = bench.train_rows(quick=True, repeat=1)
    steps = [r for r in train if "ms" in r]
    assert len(kernels) == 12 and len(steps) == 3
    for row in kernels + steps:
        assert row["torch_ms"] > 0 and row["vs_torch"] > 0, row
    overhead = bench.overhead_rows(quick=True)
    assert [r["what"].split()[0] for r in overhead] == ["numba-cuda", "CudaArray", "minidl",
                                                        "torch"]
    assert all(r["us"] > 0 for r in overhead)


@pytest.mark.slow
def test_shape_ops_and_their_gradients_match_cpu(rng):
    a = rng.standard_normal((2, 3, 4))
    results = []
    for device in ("cpu", "cuda"):
        x = minidl.tensor(a, device=device, requires_grad=True)
        parts = [x[:, 1:], (x[:, :2, None, 1].squeeze(2).unsqueeze(1).transpose(1, 2)
                            .permute(0, 2, 1) * minidl.ones(1, dtype=np.float64).to(device))]
        cat = minidl.cat([parts[0].reshape(2, -1), parts[1].reshape(2, -1)], axis=1)
        st = minidl.stack([cat, cat * 2], axis=1)
        padded = minidl.pad(st, ((0, 0), (1, 0), (2, 1)))
        y = (padded.softmax(axis=-1) * minidl.arange(padded.shape[-1], dtype=np.float64)
             .to(device)).sum() + x.var() + x.max(axis=1).sum() + x.mean(axis=(0, 2)).sum()
        y = y + minidl.nn.functional.dropout(x, 0.0).sum()
        y.backward()
        results.append((y.item(), x.grad.numpy()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-12)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_inception_step_matches_cpu():
    from minidl.models import bn_inception_lite
    out = {}
    for device in ("cpu", "cuda"):
        minidl.manual_seed(0)
        m = bn_inception_lite(num_classes=3, in_channels=1, width=0.1).to(np.float64)
        m.to(device)
        opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        x = minidl.tensor(np.random.default_rng(0).standard_normal((2, 1, 8, 8)), device=device)
        loss = minidl.cross_entropy(m(x), minidl.tensor([0, 2], device=device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        out[device] = (loss.item(), m.state_dict())
    np.testing.assert_allclose(out["cuda"][0], out["cpu"][0], rtol=1e-12)
    for k, v in out["cpu"][1].items():
        np.testing.assert_allclose(out["cuda"][1][k], v, rtol=1e-9, atol=1e-12, err_msg=k)


def test_parameter_of_a_gpu_tensor_shares_its_data():
    t = minidl.tensor(np.ones(3, np.float32), device="cuda")
    p = nn.Parameter(t)
    assert p.device == "cuda" and p.data is t.data
    assert minidl.tensor(t).data is t.data
    c = minidl.tensor(t, device="cpu")
    assert c.device == "cpu" and isinstance(c.data, np.ndarray)
    with pytest.raises(ValueError, match=r"move it with \.to\('cuda'\)"):
        nn.Linear(2, 3, device="cuda")


@pytest.mark.slow
def test_where_clip_pow_abs_match_cpu(rng):
    a = rng.standard_normal((3, 4))
    b = rng.random(4) + 0.5
    results = []
    for device in ("cpu", "cuda"):
        x = minidl.tensor(a, device=device, requires_grad=True)
        e = minidl.tensor(b, device=device, requires_grad=True)
        y = (minidl.where(x > 0, x * 2, e) + x.clip(-0.5, 0.5) + x.abs() ** e
             + minidl.maximum(x, e) + minidl.minimum(x, 0.1) + (x * x + 1).log()
             + (x * x + 1).sqrt() + x.tanh() + x.sigmoid() + x.log_softmax(axis=0)
             + x.softmax(axis=1) + (x / e) - e)
        loss = y.sum() + minidl.mse_loss(x, x.detach() * 0.5)
        loss.backward()
        results.append((loss.item(), x.grad.numpy(), e.grad.numpy()))
    for got, want in zip(results[1], results[0]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# ---- gradcheck on the device (float64) ------------------------------------------------

def c64(rng, *shape, scale=1.0):
    return minidl.tensor(rng.standard_normal(shape) * scale, device="cuda",
                         requires_grad=True)


@pytest.mark.slow  # a few seconds on the simulator
@pytest.mark.parametrize("n, c, h, w, k, r, stride, padding, dilation, groups", [
    (1, 2, 4, 3, 3, 2, 1, 1, 1, 1),
    (2, 2, 4, 4, 2, 3, 2, 1, 2, 2),     # groups = C (depthwise), stride 2, dilation 2
])
def test_gradcheck_conv2d_on_cuda(n, c, h, w, k, r, stride, padding, dilation, groups, rng):
    import minidl.nn.functional as F
    x = c64(rng, n, c, h, w)
    wt = c64(rng, k, c // groups, r, r)
    b = c64(rng, k)
    assert minidl.gradcheck(lambda x, wt, b: F.conv2d(x, wt, b, stride, padding, dilation,
                                                      groups), [x, wt, b])
    assert x.grad.device == "cuda" and wt.grad.device == "cuda"


def test_gradcheck_on_cuda_catches_a_wrong_gradient(rng, monkeypatch):
    """The check can fail: a backward-input kernel off by 1% is caught."""
    import minidl.nn.functional as F
    good = kc.conv2d_backward_input
    monkeypatch.setattr(kc, "conv2d_backward_input", lambda *a: good(*a) * 1.01)
    x, wt = c64(rng, 1, 1, 3, 3), c64(rng, 1, 1, 2, 2)
    assert not minidl.gradcheck(lambda x, wt: F.conv2d(x, wt), [x, wt], raise_exception=False)


@pytest.mark.slow  # a few seconds on the simulator
def test_gradcheck_batch_norm_and_pools_on_cuda(rng):
    import minidl.nn.functional as F
    x = c64(rng, 2, 2, 3, 3, scale=2.0)
    gamma, beta = c64(rng, 2), c64(rng, 2)

    def bn(x, g, b):  # fresh running statistics: training mode updates them in place
        return F.batch_norm(x, minidl.zeros(2, dtype=minidl.float64).cuda(),
                            minidl.ones(2, dtype=minidl.float64).cuda(), g, b, training=True)
    assert minidl.gradcheck(bn, [x, gamma, beta], atol=1e-5, rtol=1e-4)
    # distinct values keep max pooling away from ties
    xp = minidl.tensor(rng.permutation(2 * 4 * 4).reshape(1, 2, 4, 4) / 10.0, device="cuda",
                       requires_grad=True)
    assert minidl.gradcheck(lambda x: F.max_pool2d(x, 2, 2), [xp])
    assert minidl.gradcheck(lambda x: F.avg_pool2d(x, 3, 2, 1, False, False), [xp])
    assert minidl.gradcheck(lambda x: F.adaptive_avg_pool2d(x, 1), [xp])


@pytest.mark.slow  # a few seconds on the simulator
def test_gradcheck_linear_loss_and_elementwise_on_cuda(rng):
    x, w, b = c64(rng, 3, 4), c64(rng, 2, 4), c64(rng, 2)
    t = minidl.tensor(np.array([1, 0, 1]), device="cuda")
    assert minidl.gradcheck(lambda x, w, b: minidl.cross_entropy(
        minidl.functions.linear(x, w, b), t), [x, w, b])
    a, c = c64(rng, 2, 3), c64(rng, 3)
    assert minidl.gradcheck(lambda a, c: (minidl.tanh(a) * c + minidl.exp(c)).sum(axis=1),
                            [a, c])
    assert minidl.gradcheck(lambda a: minidl.softmax(a, axis=-1).mean(), [a])


def test_conv_offset_tables_stay_bounded(rng, monkeypatch):
    """The per-geometry offset tables are a cache, not a leak: past the cap it starts over,
    and results stay right."""
    monkeypatch.setattr(kc, "_CONV_TABLES_MAX", 2)
    kc._CONV_TABLES.clear()
    w = rng.standard_normal((2, 1, 3, 3))
    for size in (5, 6, 7, 8):
        x = rng.standard_normal((1, 1, size, size))
        close(kc.conv2d_forward(dev(x), dev(w), None, (1, 1), (1, 1), (1, 1), 1),
              ref.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1), 1))
        assert len(kc._CONV_TABLES) <= 2
