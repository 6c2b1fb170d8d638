"""Stochastic gradient descent with PyTorch's exact update rule."""
from __future__ import annotations

import numpy as np

from ..backend import backend_for
from .optimizer import Optimizer


class SGD(Optimizer):
    """    g = grad + weight_decay * p
           buf = g                                  (first step)
           buf = momentum * buf + (1 - dampening) * g   (later steps)
           g = g + momentum * buf  if nesterov  else  buf
           p = p - lr * g
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check_group(self, group):
        if group["lr"] < 0:
            raise ValueError(f"SGD: invalid learning rate {group['lr']}")
        if group["momentum"] < 0:
            raise ValueError(f"SGD: invalid momentum {group['momentum']}")
        if group["weight_decay"] < 0:
            raise ValueError(f"SGD: invalid weight_decay {group['weight_decay']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: nesterov momentum requires a momentum and zero dampening")

    def _update(self, group):
        # Options are read once per group, as Python floats: a NumPy float64 lr would
        # make every product below a float64 temporary for float32 parameters.
        lr = float(group["lr"])
        momentum = float(group["momentum"])
        dampening = float(group["dampening"])
        weight_decay = float(group["weight_decay"])
        nesterov = group["nesterov"]
        state = self.state
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if p.device != "cpu":  # one fused kernel (kernels/cuda/optim.py)
                st = state.get(p)
                buf = None if st is None else st["momentum_buffer"]
                if momentum != 0 and buf is None:
                    buf = np.empty_like(p.data)
                    state[p] = {"momentum_buffer": buf}
                backend_for(p).sgd_step(p.data, grad.data, buf, lr, momentum, dampening,
                                        weight_decay, nesterov, st is None)
                continue
            d_p = grad.data
            if weight_decay != 0:
                d_p = d_p + weight_decay * p.data
            if momentum != 0:
                st = state.get(p)
                if st is None:
                    buf = d_p.copy()  # PyTorch: the first step sets the buffer to the grad
                    state[p] = {"momentum_buffer": buf}
                else:
                    buf = st["momentum_buffer"]
                    buf *= momentum
                    if dampening == 0:
                        buf += d_p
                    else:
                        buf += (1 - dampening) * d_p
                d_p = d_p + momentum * buf if nesterov else buf
            p.data -= lr * d_p
