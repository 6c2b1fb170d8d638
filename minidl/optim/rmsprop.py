"""RMSprop with PyTorch's update rule (eps added outside the square root):

    g = grad + weight_decay * p
    s = alpha * s + (1 - alpha) * g^2
    centered:  a = alpha * a + (1 - alpha) * g;  d = sqrt(s - a^2) + eps
    else:      d = sqrt(s) + eps
    momentum:  buf = momentum * buf + g / d;  p = p - lr * buf
    else:      p = p - lr * g / d
"""
from __future__ import annotations

import numpy as np

from ..backend import backend_for
from .optimizer import Optimizer


class RMSprop(Optimizer):
    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered))

    def _check_group(self, group):
        for key in ("lr", "alpha", "eps", "weight_decay", "momentum"):
            if group[key] < 0:
                raise ValueError(f"RMSprop: invalid {key} {group[key]}")

    def _update(self, group):
        lr = float(group["lr"])
        alpha = float(group["alpha"])
        eps = float(group["eps"])
        weight_decay = float(group["weight_decay"])
        momentum = float(group["momentum"])
        centered = group["centered"]
        state = self.state
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            g = grad.data
            st = state.get(p)
            if st is None:
                st = state[p] = {"step": 0, "square_avg": np.zeros_like(p.data)}
                if momentum > 0:
                    st["momentum_buffer"] = np.zeros_like(p.data)
                if centered:
                    st["grad_avg"] = np.zeros_like(p.data)
            st["step"] += 1
            if p.device != "cpu":  # one fused kernel (kernels/cuda/optim.py)
                backend_for(p).rmsprop_step(p.data, g, st["square_avg"], st.get("grad_avg"),
                                            st.get("momentum_buffer"), lr, alpha, eps,
                                            weight_decay, momentum, centered)
                continue
            if weight_decay != 0:
                g = g + weight_decay * p.data
            s = st["square_avg"]
            tmp = np.multiply(g, g)
            tmp *= 1 - alpha
            s *= alpha
            s += tmp
            if centered:
                a = st["grad_avg"]
                a *= alpha
                np.multiply(g, 1 - alpha, out=tmp)
                a += tmp
                np.multiply(a, a, out=tmp)
                np.subtract(s, tmp, out=tmp)
                np.sqrt(tmp, out=tmp)
            else:
                np.sqrt(s, out=tmp)
            tmp += eps
            np.divide(g, tmp, out=tmp)
            if momentum > 0:
                buf = st["momentum_buffer"]
                buf *= momentum
                buf += tmp
                p.data -= lr * buf
            else:
                tmp *= lr
                p.data -= tmp
