"""Every differentiable op of the foundation against float64 central differences, on
hypothesis-drawn shapes with broadcasting and size-1 dimensions."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minidl as md
from minidl.functions import getitem, linear

dims = st.integers(1, 4)
shapes = st.lists(dims, min_size=0, max_size=3).map(tuple)


def t64(rng, shape, low=None, high=None):
    data = rng.standard_normal(shape) if low is None else rng.uniform(low, high, shape)
    return md.tensor(np.ascontiguousarray(data, dtype=np.float64), requires_grad=True)


@st.composite
def broadcast_pair(draw):
    """Two shapes that broadcast: drop leading dims and set some dims to 1."""
    full = draw(st.lists(dims, min_size=1, max_size=3))
    def derive():
        n = draw(st.integers(0, len(full)))
        return tuple(1 if draw(st.booleans()) else d for d in full[len(full) - n:])
    return derive(), derive()


BINARY = {
    "add": md.add, "sub": md.sub, "mul": md.mul, "div": md.div,
    "maximum": md.maximum, "pow": md.pow,
}


@pytest.mark.parametrize("name", sorted(BINARY))
@given(shapes=broadcast_pair(), seed=st.integers(0, 2**16))
def test_binary_ops(name, shapes, seed):
    rng = np.random.default_rng(seed)
    sa, sb = shapes
    if name == "pow":
        a, b = t64(rng, sa, 0.5, 2.0), t64(rng, sb, -1.5, 1.5)
    elif name == "div":
        a, b = t64(rng, sa), t64(rng, sb, 0.5, 2.0)
    else:
        a, b = t64(rng, sa), t64(rng, sb)
    assert md.gradcheck(BINARY[name], [a, b])


UNARY = {
    "neg": (md.neg, None), "exp": (md.exp, None), "log": (md.log, (0.5, 3)),
    "sqrt": (md.sqrt, (0.5, 3)), "relu": (md.relu, None), "sigmoid": (md.sigmoid, None),
    "tanh": (md.tanh, None), "abs": (md.abs, None),
    "softmax": (lambda x: md.softmax(x, axis=-1), None),
    "log_softmax": (lambda x: md.log_softmax(x, axis=0 if x.ndim else -1), None),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_unary_ops(name, shape, seed):
    fn, domain = UNARY[name]
    if name in ("softmax", "log_softmax") and not shape:
        shape = (3,)
    rng = np.random.default_rng(seed)
    x = t64(rng, shape) if domain is None else t64(rng, shape, *domain)
    if name in ("relu", "abs"):  # keep away from the kink at 0
        x.data[np.abs(x.data) < 1e-2] = 0.5
    assert md.gradcheck(fn, [x])


@st.composite
def shape_and_axis(draw):
    shape = draw(st.lists(dims, min_size=1, max_size=3).map(tuple))
    axis = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1),
                          st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=2,
                                   unique=True).map(tuple)))
    return shape, axis, draw(st.booleans())


@pytest.mark.parametrize("name", ["sum", "mean", "var", "var0", "max"])
@given(case=shape_and_axis(), seed=st.integers(0, 2**16))
def test_reductions(name, case, seed):
    shape, axis, keepdims = case
    x = t64(np.random.default_rng(seed), shape)
    if name == "var":
        axes = range(len(shape)) if axis is None else np.atleast_1d(axis)
        if np.prod([shape[a] for a in axes]) < 2:
            return  # unbiased variance of one element is undefined
    kwargs = {"correction": 0} if name == "var0" else {}
    op = getattr(md, "var" if name == "var0" else name)

    def fn(x):
        return op(x, axis=axis, keepdims=keepdims, **kwargs)
    assert md.gradcheck(fn, [x])


@given(sa=st.sampled_from([(3,), (2, 3), (4, 2, 3), (1, 2, 3)]),
       sb=st.sampled_from([(3,), (3, 2), (1, 3, 2), (4, 3, 2)]), seed=st.integers(0, 2**16))
def test_matmul_batched_and_1d(sa, sb, seed):
    rng = np.random.default_rng(seed)
    assert md.gradcheck(md.matmul, [t64(rng, sa), t64(rng, sb)])


@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias, rng):
    x, w = t64(rng, (5, 4)), t64(rng, (3, 4))
    args = [x, w, t64(rng, (3,))] if bias else [x, w]
    assert md.gradcheck(linear, args)
    x3 = t64(rng, (2, 5, 4))
    assert md.gradcheck(lambda x, w: linear(x, w), [x3, w])


def test_shape_ops(rng):
    x = t64(rng, (2, 3, 4))
    assert md.gradcheck(lambda x: x.reshape(4, 6), [x])
    assert md.gradcheck(lambda x: x.flatten(1), [x])
    assert md.gradcheck(lambda x: x.permute(2, 0, 1), [x])
    assert md.gradcheck(lambda x: x.transpose(0, 2), [x])
    assert md.gradcheck(lambda x: x.unsqueeze(1).squeeze(1), [x])
    assert md.gradcheck(lambda x: md.pad(x, ((0, 0), (1, 2), (2, 0)), value=3.0), [x])


@pytest.mark.parametrize("key", [
    (slice(None), 1), (Ellipsis, slice(1, 3)), (0, slice(None, None, 2), -1),
    np.array([1, 0, 1, 1]),  # repeated indices must accumulate
    (np.array([0, 1, 1]), slice(None), np.array([3, 0, 3])),
    np.array([True, False]),
])
def test_getitem(key, rng):
    x = t64(rng, (2, 3, 4)) if not isinstance(key, np.ndarray) or key.dtype == bool \
        else t64(rng, (2, 3, 4))
    assert md.gradcheck(lambda x: getitem(x, key), [x])


@given(n=st.integers(1, 3), axis=st.integers(-2, 1), seed=st.integers(0, 2**16))
def test_concatenate_and_stack(n, axis, seed):
    rng = np.random.default_rng(seed)
    parts = [t64(rng, (2, 1 + i) if axis in (1, -1) else (1 + i, 3)) for i in range(n)]
    assert md.gradcheck(lambda *p: md.concatenate(p, axis=axis), parts)
    same = [t64(rng, (2, 3)) for _ in range(n)]
    assert md.gradcheck(lambda *p: md.stack(p, axis=axis), same)


@given(shapes=broadcast_pair(), seed=st.integers(0, 2**16))
def test_where(shapes, seed):
    rng = np.random.default_rng(seed)
    a, b = t64(rng, shapes[0]), t64(rng, shapes[1])
    cond = rng.random(np.broadcast_shapes(shapes[0], shapes[1])) > 0.5
    assert md.gradcheck(lambda a, b: md.where(cond, a, b), [a, b])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_losses(reduction, rng):
    logits = t64(rng, (6, 5))
    target = md.tensor(rng.integers(0, 5, 6))
    assert md.gradcheck(lambda z: md.cross_entropy(z, target, reduction=reduction), [logits])
    a, b = t64(rng, (3, 4)), t64(rng, (3, 4))
    assert md.gradcheck(lambda a, b: md.mse_loss(a, b, reduction=reduction), [a, b])


def test_gradcheck_catches_a_wrong_gradient(rng):
    from minidl.autograd import record

    def bad_square(x):
        return record(x.data ** 2, (x,), lambda g, needs: (g * x.data,), "BadSquare")  # 2x missing
    x = t64(rng, (3,))
    with pytest.raises(md.GradcheckError, match="input 0"):
        md.gradcheck(bad_square, [x])
    assert md.gradcheck(bad_square, [x], raise_exception=False) is False
