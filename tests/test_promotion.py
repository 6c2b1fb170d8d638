"""Type promotion follows PyTorch (torch.result_type) for tensor-tensor, tensor-0-dim and
tensor-scalar operands (issue 13 item 11)."""
import itertools

import numpy as np
import pytest

import minidl as md
from minidl import functions as F
from minidl.functions._promotion import result_type

torch = pytest.importorskip("torch")

DTYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32",
          "float64", "complex64", "complex128"]
REAL = DTYPES[:9]
SCALARS = [True, 3, -2, 2.5, 1j, np.float64(0.5), np.int32(4)]


def t_np(dtype, ndim):
    return np.ones((2,) * ndim, dtype=dtype)


def t_torch(dtype, ndim):
    return torch.from_numpy(t_np(dtype, ndim))


def torch_scalar(s):
    return s.item() if isinstance(s, np.generic) else s


@pytest.mark.parametrize("da,db", list(itertools.product(DTYPES, DTYPES)))
@pytest.mark.parametrize("nda,ndb", [(1, 1), (1, 0), (0, 1), (0, 0)])
def test_result_type_matches_torch_for_tensors(da, db, nda, ndb):
    expected = torch.result_type(t_torch(da, nda), t_torch(db, ndb))
    if expected == torch.complex32:
        pytest.skip("complex32 has no NumPy dtype")
    got = result_type(t_np(da, nda), t_np(db, ndb))
    assert str(got) == str(expected).replace("torch.", ""), (da, nda, db, ndb)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scalar", SCALARS, ids=repr)
@pytest.mark.parametrize("ndim", [1, 0])
def test_result_type_matches_torch_for_scalars(dtype, scalar, ndim):
    expected = torch.result_type(t_torch(dtype, ndim), torch_scalar(scalar))
    if expected == torch.complex32:
        pytest.skip("complex32 has no NumPy dtype")
    got = result_type(t_np(dtype, ndim), scalar)
    assert str(got) == str(expected).replace("torch.", "")
    assert result_type(scalar, t_np(dtype, ndim)) == got  # either side


@pytest.mark.parametrize("op,top", [(F.add, torch.add), (F.sub, torch.sub),
                                    (F.mul, torch.mul), (F.div, torch.div),
                                    (F.maximum, torch.maximum)])
@pytest.mark.parametrize("da,db", [("float32", "int64"), ("int64", "float32"),
                                   ("float16", "int64"), ("float32", "float64"),
                                   ("int32", "int64"), ("uint8", "int8"), ("bool", "int16"),
                                   ("int64", "int64"), ("bool", "bool")])
def test_binary_ops_give_torchs_dtype(op, top, da, db):
    if (da, db) == ("bool", "bool") and op in (F.sub, F.maximum):
        pytest.skip("torch refuses bool subtraction; maximum of bools is bool either way")
    if op is F.sub and "bool" in (da, db):
        pytest.skip("torch refuses bool subtraction")
    a, b = np.arange(1, 7).reshape(2, 3), np.arange(2, 8).reshape(2, 3)
    expected = top(torch.from_numpy(a.astype(da)), torch.from_numpy(b.astype(db)))
    got = op(md.tensor(a, dtype=da), md.tensor(b, dtype=db))
    assert str(got.dtype) == str(expected.dtype).replace("torch.", "")
    np.testing.assert_allclose(got.data.astype(np.float64),
                               expected.numpy().astype(np.float64), rtol=1e-3)


@pytest.mark.parametrize("dtype", ["int64", "int32", "uint8", "float16", "float32", "float64"])
@pytest.mark.parametrize("scalar", [2, 2.5, True])
def test_tensor_scalar_ops_give_torchs_dtype(dtype, scalar):
    x = np.arange(1, 5).astype(dtype)
    for op in ("__add__", "__radd__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__"):
        expected = getattr(torch.from_numpy(x), op)(scalar)
        got = getattr(md.tensor(x, dtype=dtype), op)(scalar)
        assert str(got.dtype) == str(expected.dtype).replace("torch.", ""), (op, scalar)


def test_complex_results_are_refused_clearly():
    with pytest.raises(TypeError, match="do not support complex"):
        md.tensor(np.ones(2, np.float32)) * 1j


def test_float32_with_int64_stays_float32_through_a_linear_layer():
    layer = md.nn.Linear(3, 2)
    x = md.tensor(np.ones((4, 3), np.float32)) * md.tensor(np.arange(3, dtype=np.int64))
    assert x.dtype == np.float32
    assert layer(x).dtype == np.float32


def test_gradient_reaches_a_differently_typed_operand_in_its_own_dtype():
    w = md.tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    s = md.tensor(np.array(3.0), requires_grad=True)   # 0-dim float64: result float32
    y = (w * s).sum()
    assert y.dtype == np.float32
    y.backward()
    assert w.grad.dtype == np.float32 and s.grad.dtype == np.float64
    np.testing.assert_allclose(w.grad.data, [3.0, 3.0])
    assert float(s.grad.data) == pytest.approx(3.0)
