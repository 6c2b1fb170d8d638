"""Adam (Kingma & Ba) and AdamW (Loshchilov & Hutter), with PyTorch's update rule:

    g = grad + weight_decay * p           (Adam: L2 in the gradient)
    p = p * (1 - lr * weight_decay)       (AdamW: decoupled decay, instead)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g^2
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import backend_for
from .optimizer import Optimizer


class Adam(Optimizer):
    _decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad))

    def _check_group(self, group):
        name = type(self).__name__
        if group["lr"] < 0:
            raise ValueError(f"{name}: invalid learning rate {group['lr']}")
        if group["eps"] < 0:
            raise ValueError(f"{name}: invalid eps {group['eps']}")
        b1, b2 = group["betas"]
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"{name}: betas must be in [0, 1), got {group['betas']}")
        if group["weight_decay"] < 0:
            raise ValueError(f"{name}: invalid weight_decay {group['weight_decay']}")

    def _update(self, group):
        lr = float(group["lr"])
        beta1, beta2 = (float(b) for b in group["betas"])
        eps = float(group["eps"])
        weight_decay = float(group["weight_decay"])
        amsgrad = group["amsgrad"]
        decoupled = self._decoupled
        state = self.state
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            g = grad.data
            st = state.get(p)
            if st is None:
                st = state[p] = {"step": 0, "exp_avg": np.zeros_like(p.data),
                                 "exp_avg_sq": np.zeros_like(p.data)}
                if amsgrad:
                    st["max_exp_avg_sq"] = np.zeros_like(p.data)
            st["step"] += 1
            step = st["step"]
            if p.device != "cpu":  # one fused kernel (kernels/cuda/optim.py)
                backend_for(p).adam_step(
                    p.data, g, st["exp_avg"], st["exp_avg_sq"], st.get("max_exp_avg_sq"),
                    lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
                    1 - beta1 ** step, math.sqrt(1 - beta2 ** step))
                continue
            if weight_decay != 0:
                if decoupled:
                    p.data *= 1 - lr * weight_decay
                else:
                    g = g + weight_decay * p.data
            m, v = st["exp_avg"], st["exp_avg_sq"]
            # One temporary per parameter, reused for every intermediate.
            tmp = np.multiply(g, 1 - beta1)
            m *= beta1
            m += tmp
            np.multiply(g, g, out=tmp)
            tmp *= 1 - beta2
            v *= beta2
            v += tmp
            if amsgrad:
                vmax = st["max_exp_avg_sq"]
                np.maximum(vmax, v, out=vmax)
                v = vmax
            bias_correction1 = 1 - beta1 ** step
            bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
            np.sqrt(v, out=tmp)
            tmp /= bias_correction2_sqrt
            tmp += eps
            np.divide(m, tmp, out=tmp)
            tmp *= lr / bias_correction1
            p.data -= tmp


class AdamW(Adam):
    """Adam with decoupled weight decay (PyTorch's default weight_decay=1e-2)."""
    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)
