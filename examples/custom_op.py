"""Write your own differentiable op: SiLU (swish), y = x * sigmoid(x).

    python examples/custom_op.py

An op computes its output with NumPy and calls `record(out, parents, backward, name)`
(minidl/autograd.py). `backward(g, needs_grad)` receives dL/dy and returns one gradient
per parent, of that parent's shape, or None where `needs_grad[i]` is False (so nobody
pays for a gradient nobody wants). Here, with s = sigmoid(x):

    dy/dx = s + x * s * (1 - s)      so   dL/dx = g * (s + x * s * (1 - s))

Then `minidl.gradcheck` compares the tape's gradient with central finite differences in
float64, and we train a tiny model that uses the op.
"""
import argparse

import numpy as np

import minidl
from minidl import nn
from minidl.autograd import record


def silu(x: minidl.Tensor) -> minidl.Tensor:
    """SiLU, elementwise: x * sigmoid(x), for a tensor of any shape."""
    s = 1.0 / (1.0 + np.exp(-x.data))        # saved for the backward pass
    out = x.data * s

    def backward(g, needs_grad):              # g = dL/dout, shape of out
        return (g * (s + x.data * s * (1.0 - s)),)   # one gradient per parent: (dL/dx,)
    return record(out.astype(x.dtype, copy=False), (x,), backward, "SiLU")


class SiLU(nn.Module):
    def forward(self, x):
        return silu(x)


def main(quick: bool) -> None:
    minidl.manual_seed(0)
    # 1. The gradient agrees with finite differences (float64: the differences need it).
    x = minidl.randn(4, 5, dtype=minidl.float64, requires_grad=True)
    assert minidl.gradcheck(silu, [x])
    print("gradcheck(silu): ok")

    # 2. The op agrees with the same function composed from built-in ops.
    y_ref = x * x.sigmoid()
    assert np.allclose(silu(x).detach().numpy(), y_ref.detach().numpy())
    print("silu(x) == x * sigmoid(x): ok")

    # 3. It trains: fit y = sin(3x) with a small MLP that uses the new op.
    xs = minidl.tensor(np.linspace(-1, 1, 64, dtype=np.float32).reshape(-1, 1))
    ys = minidl.tensor(np.sin(3 * xs.data))
    model = nn.Sequential(nn.Linear(1, 32), SiLU(), nn.Linear(32, 1))
    opt = minidl.optim.Adam(model.parameters(), lr=0.01)
    steps = 20 if quick else 500
    for step in range(steps + 1):
        loss = nn.functional.mse_loss(model(xs), ys)
        if step == 0:
            first = loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"mse: {first:.4f} at step 0 -> {loss.item():.4f} at step {steps}")
    assert loss.item() < first


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few training steps (for tests)")
    main(p.parse_args().quick)
