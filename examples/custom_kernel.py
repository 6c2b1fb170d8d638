"""Write your own Numba kernel and plug it in as a differentiable op: softplus.

    python examples/custom_kernel.py

    softplus(x) = log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|))    (no overflow)
    d softplus / dx = sigmoid(x)

The recipe minidl's own kernels follow (kernels/README.md): a plain NumPy reference, a
parallel `@njit` kernel with the same signature, a test of one against the other, then
an op that calls the kernel forward and backward and records itself on the tape.
Run with NUMBA_DISABLE_JIT=1 to step through the kernel in a Python debugger.
"""
import argparse

import numpy as np
from numba import njit, prange

import minidl
from minidl import nn
from minidl.autograd import record


# ---- the NumPy reference: the readable definition ---------------------------------
def softplus_forward_ref(x):
    return (np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))).astype(x.dtype)


def softplus_backward_ref(dy, x):
    return (dy / (1 + np.exp(-x))).astype(x.dtype)


# ---- the Numba kernels: one parallel loop over the flattened array ----------------
@njit(parallel=True, cache=True)
def softplus_forward(x):
    flat, y = x.ravel(), np.empty(x.size, x.dtype)
    for i in prange(flat.size):  # iterations are independent: Numba splits them over threads
        v = flat[i]
        y[i] = max(v, 0) + np.log1p(np.exp(-abs(v)))
    return y.reshape(x.shape)


@njit(parallel=True, cache=True)
def softplus_backward(dy, x):
    flat, g, dx = x.ravel(), dy.ravel(), np.empty(x.size, x.dtype)
    for i in prange(flat.size):
        dx[i] = g[i] / (1 + np.exp(-flat[i]))  # dy * sigmoid(x)
    return dx.reshape(x.shape)


# ---- the op: the kernels on the tape ----------------------------------------------
def softplus(x: minidl.Tensor) -> minidl.Tensor:
    xd = np.ascontiguousarray(x.data)  # the kernels' contract: C-contiguous float arrays
    return record(softplus_forward(xd), (x,),
                  lambda g, needs_grad: (softplus_backward(np.ascontiguousarray(g), xd),),
                  "Softplus")


def main(quick: bool) -> None:
    rng = np.random.default_rng(0)
    # 1. Kernel == reference, on odd sizes, both dtypes, and extreme values.
    for shape in [(1,), (7, 3), (2, 3, 5, 5)]:
        for dtype, tol in ((np.float32, 1e-6), (np.float64, 1e-12)):
            x = (rng.standard_normal(shape) * 30).astype(dtype)
            dy = rng.standard_normal(shape).astype(dtype)
            np.testing.assert_allclose(softplus_forward(x), softplus_forward_ref(x), rtol=tol)
            np.testing.assert_allclose(softplus_backward(dy, x), softplus_backward_ref(dy, x),
                                       rtol=tol, atol=tol)
    print("numba kernels == numpy reference: ok")

    # 2. The op's gradient agrees with finite differences.
    x = minidl.randn(3, 4, dtype=minidl.float64, requires_grad=True)
    assert minidl.gradcheck(softplus, [x])
    print("gradcheck(softplus): ok")

    # 3. It trains, inside a model, through a Module wrapper.
    class Softplus(nn.Module):
        def forward(self, x):
            return softplus(x)

    minidl.manual_seed(0)
    xs = minidl.randn(128, 2)
    ys = minidl.tensor((xs.data[:, 0] * xs.data[:, 1] > 0).astype(np.int64))  # XOR-like
    model = nn.Sequential(nn.Linear(2, 16), Softplus(), nn.Linear(16, 2))
    opt = minidl.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    steps = 10 if quick else 300
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(xs), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = (model(xs).data.argmax(1) == ys.data).mean()
    print(f"step {steps}: loss {loss.item():.3f}, train accuracy {acc:.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few training steps (for tests)")
    main(p.parse_args().quick)
