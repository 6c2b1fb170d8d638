"""What `minidl bench` times: kernel cases (conv2d, batch norm, pooling, matmul) and
training-step cases, each for minidl and for PyTorch at its best.

How a number is taken is benchmarks/harness.py's business; this module only says what to
call. Imports flow one way: suite -> cases -> harness.

A kernel case is described by a *spec*, a small JSON-able dict, for example

    {"op": "conv2d", "input": [64, 32, 28, 28], "out_channels": 64, "kernel": 3,
     "stride": 1, "padding": 1, "groups": 1, "dilation": 1, "dtype": "float32",
     "format": "nchw", "pass": "forward"}

`build(spec)` turns it into a `Case` (the row's name, the work it does and a maker of
zero-argument callables per backend). The suite's fixed shapes are specs too
(`suite_specs`), and so are the single shapes of `minidl bench conv2d --input ...`
(`single_specs`): the torch child process receives the specs and rebuilds the very same
cases and data.

PyTorch at its best, not a straw man: torch is timed in NCHW and in channels_last (4-D
inputs), at 1 thread and at N threads, and its fastest configuration is kept per row.
Its ATen ops are called directly (no autograd bookkeeping), as minidl's kernels are.

No numba, `kernels` or torch at module level: the torch child imports this module after
torch, and the numba parent must never import torch.
"""
from __future__ import annotations

import functools
import json
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from minidl.benchmarks.harness import MODES, measure

FAMILIES = ("conv2d", "batch_norm", "pooling", "matmul")
OPS = ("conv2d", "batch_norm", "max_pool2d", "avg_pool2d", "matmul")
EPS = 1e-5
DTYPES = ("float32", "float64")
PASSES = {  # every pass an op has, in table order
    "conv2d": ("forward", "backward_input", "backward_weight"),
    "matmul": ("forward", "backward_input", "backward_weight"),
    "batch_norm": ("forward", "backward"),
    "max_pool2d": ("forward", "backward"),
    "avg_pool2d": ("forward", "backward"),
}
PASS_ALIASES = {"fwd": "forward", "bwd": "backward", "bwd-in": "backward_input",
                "bwd-w": "backward_weight"}

# --- the suite's shapes -------------------------------------------------------------------

# conv2d: (N, C, H, W), K, kernel, stride, padding: the layers of the paper's CNNs
CONV_SHAPES = [
    ((64, 1, 28, 28), 32, 3, 1, 1),
    ((64, 32, 28, 28), 64, 3, 1, 1),
    ((64, 64, 14, 14), 64, 1, 1, 0),
    ((64, 64, 14, 14), 96, 3, 1, 1),
    ((64, 96, 7, 7), 128, 3, 1, 1),
    ((64, 128, 14, 14), 128, 3, 2, 1),
]
# batch norm: conv feature maps, and the MLP's hidden layers at batch 60 and 256
BN_SHAPES = [(64, 64, 28, 28), (64, 128, 14, 14), (256, 96, 7, 7), (60, 100), (256, 100)]
POOL_CASES = [  # (op, shape, kernel, stride, padding)
    ("max_pool2d", (64, 64, 28, 28), 3, 2, 1),
    ("avg_pool2d", (64, 64, 28, 28), 3, 2, 1),
    ("max_pool2d", (64, 128, 14, 14), 2, 2, 0),
    ("avg_pool2d", (64, 128, 14, 14), 2, 2, 0),
]
MATMUL_SHAPES = [(60, 784, 100), (256, 784, 100)]  # x (N, in) @ w (in, out)

# --quick: tiny versions of every family, to check the harness, not the machine
QUICK_CONV = [((2, 1, 8, 8), 4, 3, 1, 1), ((2, 4, 8, 8), 6, 3, 2, 1), ((2, 4, 6, 6), 4, 1, 1, 0)]
QUICK_BN = [(2, 3, 5, 5), (6, 5)]
QUICK_POOL = [("max_pool2d", (2, 3, 9, 9), 3, 2, 1), ("avg_pool2d", (2, 3, 8, 8), 2, 2, 0)]
QUICK_MATMUL = [(4, 32, 8)]

CONV_ROUTES = ("numba", "numba_old", "numba_nhwc", "numpy")  # the suite's conv2d columns
BACKENDS = ("numba", "numba_old", "numba_nhwc", "numpy", "torch")


@dataclass
class Case:
    """One row of the table: a kernel pass on one problem."""
    kernel: str                  # family: conv2d, batch_norm, pooling, matmul
    case: str                    # the problem, for people
    pass_: str                   # forward, backward, backward_input, backward_weight
    bound: str                   # "compute" (judged against the FMA peak) or "memory" (copy)
    work: float                  # flops (compute) or bytes that must move (memory) per call
    layouts: tuple               # torch memory formats worth trying
    make: Callable               # make(backend, layout) -> zero-argument callable
    backends: tuple = ("numba", "numpy")
    minidl_impl: str = "numba"   # what minidl runs for this op
    dtype: str = "float32"
    spec: dict = field(default_factory=dict)

    @property
    def unit(self):
        return "GFLOP/s" if self.bound == "compute" else "GB/s"


# --- specs: from the suite's tables and from the command line -----------------------------

def suite_specs(quick=False, families=FAMILIES) -> list[dict]:
    """The suite's rows as specs, in table order."""
    specs = []
    if "conv2d" in families:
        for (shape, K, k, s, p) in QUICK_CONV if quick else CONV_SHAPES:
            for pas in PASSES["conv2d"]:
                if pas == "backward_input" and shape[1] == 1:
                    continue  # a first layer needs no input gradient, in either framework
                specs.append(_conv_spec(shape, K, k, s, p, 1, 1, "float32", "nchw", pas,
                                        routes=True))
    if "batch_norm" in families:
        for shape in QUICK_BN if quick else BN_SHAPES:
            specs += [{"op": "batch_norm", "input": list(shape), "dtype": "float32",
                       "pass": pas} for pas in PASSES["batch_norm"]]
    if "pooling" in families:
        for op, shape, k, s, p in QUICK_POOL if quick else POOL_CASES:
            specs += [_pool_spec(op, shape, k, s, p, "float32", pas) for pas in PASSES[op]]
    if "matmul" in families:
        for N, n_in, n_out in QUICK_MATMUL if quick else MATMUL_SHAPES:
            specs += [{"op": "matmul", "shapes": [[N, n_in], [n_in, n_out]],
                       "dtype": "float32", "pass": pas} for pas in PASSES["matmul"]]
    return specs


def _choose(text, flag, choices) -> list:
    """'a,b' -> ['a', 'b'], each among `choices`; a ValueError naming the flag otherwise."""
    chosen = [c.strip() for c in str(text).split(",") if c.strip()]
    if not chosen or any(c not in choices for c in chosen):
        raise ValueError(f"{flag} {text!r}: choose among {', '.join(choices)}")
    return list(dict.fromkeys(chosen))


def parse_backends(text) -> tuple:
    """'numpy,torch' -> the backends to time (--backend); minidl's numba backend is always
    timed: every row's rates and ratios are about it."""
    return tuple(dict.fromkeys(["numba", *_choose(text, "--backend", BACKENDS)])) if text \
        else BACKENDS


def parse_families(text) -> tuple:
    """'conv2d,matmul' -> the families of the suite to run (--only)."""
    return tuple(_choose(text, "--only", FAMILIES)) if text else FAMILIES


def _conv_spec(shape, K, k, s, p, g, d, dtype, fmt, pas, routes=False):
    spec = {"op": "conv2d", "input": list(shape), "out_channels": K, "kernel": k, "stride": s,
            "padding": p, "groups": g, "dilation": d, "dtype": dtype, "format": fmt,
            "pass": pas}
    if routes:
        spec["routes"] = True  # also time the old routes and the NHWC entry points
    return spec


def _pool_spec(op, shape, k, s, p, dtype, pas):
    return {"op": op, "input": list(shape), "kernel": k, "stride": s, "padding": p,
            "dtype": dtype, "pass": pas}


def parse_ints(text, flag, count=None, sep=","):
    """'64,32,28,28' -> [64, 32, 28, 28], all positive; a clear ValueError otherwise."""
    try:
        dims = [int(v) for v in str(text).split(sep)]
    except ValueError:
        dims = []
    if not dims or any(v <= 0 for v in dims) or (count and len(dims) not in count):
        want = " or ".join(str(c) for c in count) + " " if count else ""
        raise ValueError(f"{flag} {text!r}: expected {want}positive integers separated "
                         f"by {sep!r}")
    return dims


def parse_passes(text, op) -> list:
    """'fwd,bwd-w' or 'all' -> canonical pass names of `op`."""
    out = []
    for name in str(text).split(","):
        name = PASS_ALIASES.get(name.strip(), name.strip())
        if name == "all":
            out += PASSES[op]
        elif name in PASSES[op]:
            out.append(name)
        else:
            choices = ", ".join(list(PASSES[op]) + [a for a, v in PASS_ALIASES.items()
                                                   if v in PASSES[op]] + ["all"])
            raise ValueError(f"--pass {text!r}: {op} has the passes {choices}")
    return list(dict.fromkeys(out))


def _out_size(size, k, s, p, d=1):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def single_specs(op, opts) -> list[dict]:
    """Specs of one shape from the command line (`minidl bench conv2d --input ...`);
    `opts` maps option names (input, out_channels, kernel, ...) to their raw values.
    Every inconsistency raises one ValueError naming the option and the shapes."""
    if op not in OPS:
        raise ValueError(f"unknown kernel {op!r}; choose among {', '.join(OPS)}")
    dtype = opts.get("dtype") or "float32"
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose among {', '.join(DTYPES)}")
    passes = parse_passes(opts.get("pass") or "all", op)
    if op == "matmul":
        text = opts.get("shapes")
        parts = str(text).split(",") if text else []
        if len(parts) != 2:
            raise ValueError(f"--shapes {text!r}: expected two matrices AxB,BxC")
        (a, b), (b2, c) = (parse_ints(m, "--shapes", (2,), sep="x") for m in parts)
        if b != b2:
            raise ValueError(f"--shapes {text!r}: ({a}, {b}) @ ({b2}, {c}) do not chain: "
                             f"the inner sizes {b} and {b2} differ")
        return [{"op": op, "shapes": [[a, b], [b, c]], "dtype": dtype, "pass": pas}
                for pas in passes]
    if opts.get("input") is None:
        raise ValueError(f"{op} needs --input N,C,H,W")
    if op == "batch_norm":
        shape = parse_ints(opts["input"], "--input", (2, 4))
        return [{"op": op, "input": shape, "dtype": dtype, "pass": pas} for pas in passes]
    shape = parse_ints(opts["input"], "--input", (4,))
    N, C, H, W = shape
    k = parse_ints(opts.get("kernel") or 3, "--kernel", (1,))[0]
    s = parse_ints(opts.get("stride") or 1, "--stride", (1,))[0]
    p = int(opts.get("padding") or 0)
    if p < 0:
        raise ValueError(f"--padding {p}: must be 0 or more")
    if op == "conv2d":
        if opts.get("out_channels") is None:
            raise ValueError("conv2d needs --out-channels K")
        K = parse_ints(opts["out_channels"], "--out-channels", (1,))[0]
        g = parse_ints(opts.get("groups") or 1, "--groups", (1,))[0]
        d = parse_ints(opts.get("dilation") or 1, "--dilation", (1,))[0]
        fmt = opts.get("format") or "nchw"
        if fmt not in ("nchw", "channels_last"):
            raise ValueError(f"--format {fmt!r}: choose nchw or channels_last")
        if C % g or K % g:
            raise ValueError(f"--groups {g}: must divide the input channels ({C}) and "
                             f"--out-channels ({K})")
        if fmt == "channels_last" and g != 1:
            raise ValueError("--format channels_last: minidl's NHWC entry points take "
                             f"groups=1 only, not --groups {g}")
        Ho, Wo = _out_size(H, k, s, p, d), _out_size(W, k, s, p, d)
        if Ho < 1 or Wo < 1:
            raise ValueError(f"--input {N},{C},{H},{W} with --kernel {k} --dilation {d} "
                             f"--padding {p}: the output would be {Ho}x{Wo}")
        return [_conv_spec(shape, K, k, s, p, g, d, dtype, fmt, pas) for pas in passes]
    if 2 * p > k:  # PyTorch's rule, and minidl's
        raise ValueError(f"--padding {p}: at most half the --kernel ({k})")
    Ho, Wo = _out_size(H, k, s, p), _out_size(W, k, s, p)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"--input {N},{C},{H},{W} with --kernel {k} --padding {p}: the "
                         f"output would be {Ho}x{Wo}")
    return [_pool_spec(op, shape, k, s, p, dtype, pas) for pas in passes]


# --- data: plain NumPy, identical in the parent and in the torch child ----------------------

def _rng(spec, what):
    """A generator seeded by the problem itself, so the torch child gets the same data
    (Python's str hash is salted per process: crc32 of the spec instead)."""
    key = json.dumps({k: v for k, v in spec.items() if k != "pass"}, sort_keys=True)
    return np.random.default_rng([zlib.crc32(key.encode()), zlib.crc32(what.encode())])


def _randn(spec, what, shape):
    return _rng(spec, what).standard_normal(shape).astype(spec["dtype"])


def _kernels(backend):
    if backend in ("numba", "numba_nhwc"):
        import minidl.kernels.cpu as k
    else:
        import minidl.kernels.reference as k
    return k


def _to_torch(layout, *arrays):
    import torch
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return [torch.from_numpy(a).contiguous(memory_format=fmt) if a.ndim == 4
            else torch.from_numpy(a) for a in arrays]


# --- conv2d -------------------------------------------------------------------------------

def _conv_case(spec):
    N, C, H, W = spec["input"]
    K, k, s, p, d, g = (spec[key] for key in ("out_channels", "kernel", "stride", "padding",
                                               "dilation", "groups"))
    Ho, Wo = _out_size(H, k, s, p, d), _out_size(W, k, s, p, d)
    name = f"{(N, C, H, W)}->{K} k{k} s{s} p{p}" + (f" g{g}" if g > 1 else "") + \
        (f" d{d}" if d > 1 else "") + (" channels_last" if spec["format"] != "nchw" else "")
    backends = CONV_ROUTES if spec.get("routes") else ("numba", "numpy")
    return Case("conv2d", name, spec["pass"], "compute", 2.0 * N * K * Ho * Wo * C // g * k * k,
                ("nchw", "channels_last"), functools.partial(_conv_call, spec),
                backends=backends, dtype=spec["dtype"],
                minidl_impl="numba, NHWC entry" if spec["format"] == "channels_last" else "numba")


def _conv_call(spec, backend, layout):
    N, C, H, W = spec["input"]
    K, k, s, p, d, g = (spec[key] for key in ("out_channels", "kernel", "stride", "padding",
                                               "dilation", "groups"))
    Ho, Wo = _out_size(H, k, s, p, d), _out_size(W, k, s, p, d)
    x = _randn(spec, "x", (N, C, H, W))
    w = _randn(spec, "w", (K, C // g, k, k)) * np.asarray((C // g * k * k) ** -0.5, x.dtype)
    b = _randn(spec, "b", (K,))
    dy = _randn(spec, "dy", (N, K, Ho, Wo))
    pas = spec["pass"]
    if backend == "torch":
        import torch
        import torch.nn.functional as F
        tx, tw, tb, tdy = _to_torch(layout, x, w, b, dy)
        bwd = functools.partial(torch.ops.aten.convolution_backward, tdy, tx, tw, None, [s, s],
                                [p, p], [d, d], False, [0, 0], g)
        return {"forward": lambda: F.conv2d(tx, tw, tb, s, p, d, g),
                "backward_input": lambda: bwd([True, False, False]),
                "backward_weight": lambda: bwd([False, True, False])}[pas]
    if backend == "numba_old":  # the routes before conv2d_nhwc.py
        return _old_route(_conv_call(spec, "numba", layout))
    geo = ((s, s), (p, p), (d, d))
    if backend == "numba_nhwc" or (backend == "numba" and spec["format"] == "channels_last"):
        from minidl.kernels.cpu import conv2d_nhwc as nh   # the channels-last entry points
        xh, dyh = (np.ascontiguousarray(a.transpose(0, 2, 3, 1)) for a in (x, dy))
        return {"forward": lambda: nh.conv2d_forward_nhwc(xh, w, b, *geo),
                "backward_input": lambda: nh.conv2d_backward_input_nhwc(dyh, w, xh.shape, *geo),
                "backward_weight": lambda: nh.conv2d_backward_weight_nhwc(dyh, xh, w.shape,
                                                                          *geo)}[pas]
    m = _kernels(backend)
    return {"forward": lambda: m.conv2d_forward(x, w, b, *geo, g),
            "backward_input": lambda: m.conv2d_backward_input(dy, w, x.shape, *geo, g),
            "backward_weight": lambda: m.conv2d_backward_weight(dy, x, w.shape, *geo, g)}[pas]


def _old_route(fn):
    """fn run with kernels/cpu/conv2d.py's channels-last routes switched off."""
    from minidl.kernels.cpu import conv2d as cpu

    def call():
        saved, cpu._NHWC = cpu._NHWC, False
        try:
            return fn()
        finally:
            cpu._NHWC = saved
    return call


# --- batch norm (training mode: the pass a training step runs) ----------------------------

def _bn_case(spec):
    shape = tuple(spec["input"])
    nbytes = np.dtype(spec["dtype"]).itemsize * int(np.prod(shape))
    arrays = 2 if spec["pass"] == "forward" else 3  # fwd: x, y; bwd: x, dy, dx
    return Case("batch_norm", f"{'2d' if len(shape) == 4 else '1d'} {shape}", spec["pass"],
                "memory", arrays * nbytes,
                ("nchw", "channels_last") if len(shape) == 4 else ("nchw",),
                functools.partial(_bn_call, spec), dtype=spec["dtype"],
                backends=("numba", "numba_nhwc", "numpy") if len(shape) == 4
                else ("numba", "numpy"))


def _bn_call(spec, backend, layout):
    shape = tuple(spec["input"])
    x, dy = _randn(spec, "x", shape), _randn(spec, "dy", shape)
    C = shape[1]
    gamma = _rng(spec, "gamma").uniform(0.5, 1.5, C).astype(spec["dtype"])
    beta = _randn(spec, "beta", (C,))
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    mean = x.mean(axis=axes, dtype=np.float64).astype(x.dtype)
    var = x.var(axis=axes, dtype=np.float64).astype(x.dtype)
    if backend == "torch":
        import torch
        aten = torch.ops.aten
        tx, tdy = _to_torch(layout, x, dy)
        w, b = torch.from_numpy(gamma), torch.from_numpy(beta)
        _, smean, sinvstd = aten.native_batch_norm(tx, w, b, None, None, True, 0.1, EPS)
        if spec["pass"] == "forward":
            return lambda: aten.native_batch_norm(tx, w, b, None, None, True, 0.1, EPS)
        return lambda: aten.native_batch_norm_backward(tdy, tx, w, None, None, smean, sinvstd,
                                                       True, EPS, [True, True, True])
    if backend == "numba_nhwc":  # a channels_last tensor: its memory as (N*H*W, C) rows
        x, dy = (np.ascontiguousarray(a.transpose(0, 2, 3, 1)).reshape(-1, C) for a in (x, dy))
    m = _kernels(backend)
    if spec["pass"] == "forward":
        return lambda: m.batch_norm_train_forward(x, gamma, beta, EPS)
    return lambda: m.batch_norm_train_backward(dy, x, gamma, mean, var, EPS)


# --- pooling ------------------------------------------------------------------------------

def _pool_case(spec):
    N, C, H, W = spec["input"]
    k, s, p = spec["kernel"], spec["stride"], spec["padding"]
    ny, nx = N * C * _out_size(H, k, s, p) * _out_size(W, k, s, p), N * C * H * W
    is_max = spec["op"] == "max_pool2d"
    # x and y (forward), dy and dx (backward), plus the int64 argmax of max pooling
    nbytes = np.dtype(spec["dtype"]).itemsize * (nx + ny) + (8 * ny if is_max else 0)
    return Case("pooling", f"{'max' if is_max else 'avg'} {(N, C, H, W)} k{k} s{s} p{p}",
                spec["pass"], "memory", nbytes, ("nchw", "channels_last"),
                functools.partial(_pool_call, spec), dtype=spec["dtype"],
                backends=("numba", "numba_nhwc", "numpy"))


def _pool_call(spec, backend, layout):
    x = _randn(spec, "x", tuple(spec["input"]))
    k2, s2, p2 = ((spec[key],) * 2 for key in ("kernel", "stride", "padding"))
    fwd_only = spec["pass"] == "forward"
    if backend == "torch":
        import torch
        aten = torch.ops.aten
        (tx,) = _to_torch(layout, x)
        if spec["op"] == "max_pool2d":
            fwd = functools.partial(aten.max_pool2d_with_indices, tx, k2, s2, p2, [1, 1], False)
            if fwd_only:
                return fwd
            y, idx = fwd()
            return functools.partial(aten.max_pool2d_with_indices_backward, torch.ones_like(y),
                                     tx, k2, s2, p2, [1, 1], False, idx)
        fwd = functools.partial(aten.avg_pool2d, tx, k2, s2, p2, False, True)
        return fwd if fwd_only else functools.partial(
            aten.avg_pool2d_backward, torch.ones_like(fwd()), tx, k2, s2, p2, False, True, None)
    if backend == "numba_nhwc":  # the channels_last entry points on NHWC arrays
        import minidl.kernels.cpu as m
        xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if spec["op"] == "max_pool2d":
            fwd = functools.partial(m.max_pool2d_forward_nhwc, xh, k2, s2, p2, False)
            if fwd_only:
                return fwd
            y, argmax = fwd()
            return functools.partial(m.max_pool2d_backward_nhwc, np.ones_like(y), argmax,
                                     xh.shape, k2, s2, p2)
        args = (k2, s2, p2, False, True)
        fwd = functools.partial(m.avg_pool2d_forward_nhwc, xh, *args)
        return fwd if fwd_only else functools.partial(
            m.avg_pool2d_backward_nhwc, np.ones_like(fwd()), xh.shape, *args)
    m = _kernels(backend)
    if spec["op"] == "max_pool2d":
        fwd = functools.partial(m.max_pool2d_forward, x, k2, s2, p2, False)
        if fwd_only:
            return fwd
        y, argmax = fwd()
        return functools.partial(m.max_pool2d_backward, np.ones_like(y), argmax, x.shape)
    args = (k2, s2, p2, False, True)
    fwd = functools.partial(m.avg_pool2d_forward, x, *args)
    return fwd if fwd_only else functools.partial(m.avg_pool2d_backward, np.ones_like(fwd()),
                                                  x.shape, *args)


# --- matmul (minidl's is NumPy's: one backend column) ---------------------------------------

def _matmul_case(spec):
    (N, n_in), (_, n_out) = spec["shapes"]
    return Case("matmul", f"({N}, {n_in}) @ ({n_in}, {n_out})", spec["pass"], "compute",
                2.0 * N * n_in * n_out, ("nchw",), functools.partial(_matmul_call, spec),
                backends=("numba",), minidl_impl="NumPy BLAS", dtype=spec["dtype"])


def _matmul_call(spec, backend, layout):
    (N, n_in), (_, n_out) = spec["shapes"]
    x, w, dy = (_randn(spec, n, s) for n, s in (("x", (N, n_in)), ("w", (n_in, n_out)),
                                                 ("dy", (N, n_out))))
    if backend == "torch":
        import torch
        x, w, dy = map(torch.from_numpy, (x, w, dy))
        mm = torch.mm
    else:
        mm = np.matmul
    # the three GEMMs of a linear layer; transposes are views in both libraries
    return {"forward": lambda: mm(x, w), "backward_input": lambda: mm(dy, w.T),
            "backward_weight": lambda: mm(x.T, dy)}[spec["pass"]]


_BUILDERS = {"conv2d": _conv_case, "batch_norm": _bn_case, "max_pool2d": _pool_case,
             "avg_pool2d": _pool_case, "matmul": _matmul_case}


def build(spec) -> Case:
    """The Case a spec describes (see the module docstring)."""
    case = _BUILDERS[spec["op"]](spec)
    case.spec = spec
    return case


def cases(quick=False, families=FAMILIES) -> list[Case]:
    """The suite's rows, in table order; the same list in the parent and the torch child."""
    return [build(s) for s in suite_specs(quick, families)]


def torch_worker(request) -> list[dict]:
    """In the torch child: every spec in every (layout, threads) configuration."""
    import torch
    repeats, min_sample, budget = MODES[request["mode"]]
    case_list = [build(s) for s in request["specs"]]
    results = [{} for _ in case_list]
    for threads in request["torch_threads"]:
        torch.set_num_threads(threads)
        for res, case in zip(results, case_list):
            for layout in case.layouts:
                config = f"{threads} thread{'s' if threads > 1 else ''}"
                if len(case.layouts) > 1:
                    config = f"{layout}, {config}"
                res[config] = measure(case.make("torch", layout), repeats, min_sample, budget)
    return results


# --- training steps ------------------------------------------------------------------------

TRAIN_CASES = [  # (name, builder key, batch)
    ("MLP no-BN b60", "mlp", 60), ("MLP BN b60", "mlp_bn", 60),
    ("MLP no-BN b256", "mlp", 256), ("MLP BN b256", "mlp_bn", 256),
    ("CNN BN b64", "cnn", 64),
    ("Inception-lite BN b32", "inception", 32), ("Inception-lite BN b64", "inception", 64),
]
IMAGE_MODELS = ("cnn", "inception")
# a sample of training steps lasts at least 0.2 s; quick: the harness's smallest calibration
TRAIN_MODES = {"full": (7, 0.2, 20.0), "quick": MODES["quick"]}


def _cnn(nn):
    """Three conv3x3-BN-ReLU blocks, max pooling after the first two, global average
    pooling, linear: the same in minidl and torch (`nn` is minidl.nn or torch.nn)."""
    blocks, c_in = [], 1
    for i, c in enumerate((16, 32, 64)):
        blocks += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        if i < 2:
            blocks.append(nn.MaxPool2d(2))
        c_in = c
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def minidl_model(kind):
    from minidl import models, nn
    if kind in ("mlp", "mlp_bn"):
        return models.mlp(bn=kind == "mlp_bn")
    return models.bn_inception_lite() if kind == "inception" else _cnn(nn)


def torch_mlp_layers(tnn, in_features=784, hidden=(100, 100, 100), num_classes=10,
                     bn=False) -> list:
    """The layers of minidl.models.mlp in torch.nn (`tnn`): per hidden layer a Linear
    (without bias before BN), BatchNorm1d with bn, a Sigmoid; then the classifier."""
    layers, width = [], in_features
    for h in hidden:
        layers.append(tnn.Linear(width, h, bias=not bn))
        layers += [tnn.BatchNorm1d(h)] if bn else []
        layers.append(tnn.Sigmoid())
        width = h
    return layers + [tnn.Linear(width, num_classes)]


def torch_model(kind):
    import torch.nn as tnn
    if kind in ("mlp", "mlp_bn"):  # the paper's 784-100-100-100-10 sigmoid MLP
        return tnn.Sequential(tnn.Flatten(), *torch_mlp_layers(tnn, bn=kind == "mlp_bn"))
    if kind == "inception":
        from minidl.benchmarks.inception_torch import torch_bn_inception_lite
        return torch_bn_inception_lite()
    return _cnn(tnn)


def train_data(kind, batch, n_batches=8, seed=0):
    rng = np.random.default_rng(seed)
    shape = (batch, 784) if kind.startswith("mlp") else (batch, 1, 28, 28)
    return [(rng.random(shape, dtype=np.float32), rng.integers(0, 10, batch))
            for _ in range(n_batches)]


def _step_fn(model, opt, batches, loss_fn):
    """One training step per call (forward, backward, SGD-momentum update), cycling
    through the batches."""
    counter = iter(range(1 << 62))

    def step():
        x, y = batches[next(counter) % len(batches)]
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def _train_mode(mode, repeats):
    """TRAIN_MODES[mode], with `repeats` samples when given (a round of several)."""
    default, min_sample, budget = TRAIN_MODES[mode]
    return (repeats or default), min_sample, budget


def time_minidl_step(kind, batch, threads, mode="full", channels_last=False,
                     repeats=None) -> dict:
    import minidl as md
    from minidl import nn, optim
    md.set_num_threads(threads)
    md.manual_seed(0)
    model = minidl_model(kind)
    fmt = md.channels_last if channels_last else md.contiguous_format
    if channels_last:
        model.to(memory_format=fmt)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [(md.tensor(x).to(memory_format=fmt) if x.ndim == 4 else md.tensor(x),
                md.tensor(y)) for x, y in train_data(kind, batch)]
    return measure(_step_fn(model, opt, batches, nn.functional.cross_entropy),
                   *_train_mode(mode, repeats))


def time_torch_step(kind, batch, threads, channels_last=False, mode="full",
                    repeats=None) -> dict:
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = torch_model(kind).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [(torch.from_numpy(x).contiguous(memory_format=fmt) if x.ndim == 4
                else torch.from_numpy(x), torch.from_numpy(y))
               for x, y in train_data(kind, batch)]
    return measure(_step_fn(model, opt, batches, torch.nn.functional.cross_entropy),
                   *_train_mode(mode, repeats))


def train_worker(request):
    """In the torch child: every training case in every torch configuration;
    {case name: {config: timing}}."""
    out = {}
    for name, kind, batch in request["cases"]:
        out[name] = {}
        for threads in request["threads"]:
            for cl in (False, True) if kind in IMAGE_MODELS else (False,):
                config = f"{threads} thread{'s' if threads > 1 else ''}"
                if kind in IMAGE_MODELS:
                    config = f"{'channels_last' if cl else 'nchw'}, {config}"
                out[name][config] = dict(time_torch_step(kind, batch, threads, cl,
                                                         request["mode"],
                                                         request.get("repeats")),
                                         threads=threads)
    return out


# --- the batch-norm kernels' serial/parallel threshold --------------------------------------

SWEEP_SHAPES = [(60, 100), (250, 100), (1000, 100), (4000, 100),
                (8, 32, 16, 16), (16, 32, 16, 16), (32, 32, 16, 16), (64, 32, 16, 16)]


def bn_threshold_sweep(repeats=7) -> str:
    """Training forward + backward with the serial and the parallel kernels forced, on
    growing inputs: where parallel starts to win is kernels/cpu/batchnorm._SERIAL_BELOW.

        python -m minidl.benchmarks.cases bn-sweep
    """
    from minidl.kernels.cpu import batchnorm as nb_bn
    rng = np.random.default_rng(0)
    saved = nb_bn._SERIAL_BELOW
    lines = [f"{'shape':<18}{'elements':>10}{'serial us':>11}{'parallel us':>13}"]
    try:
        for shape in SWEEP_SHAPES:
            x = rng.standard_normal(shape, dtype=np.float32)
            dy = rng.standard_normal(shape, dtype=np.float32)
            g = np.ones(shape[1], np.float32)

            def step(x=x, dy=dy, g=g):
                _, mean, var = nb_bn.batch_norm_train_forward(x, g, g, EPS)
                nb_bn.batch_norm_train_backward(dy, x, g, mean, var, EPS)

            times = []
            for below in (1 << 62, 0):
                nb_bn._SERIAL_BELOW = below
                times.append(measure(step, repeats, 0.002)["median_s"])
            lines.append(f"{shape!s:<18}{x.size:>10}"
                         f"{1e6 * times[0]:>11.1f}{1e6 * times[1]:>13.1f}")
    finally:
        nb_bn._SERIAL_BELOW = saved
    return "\n".join(lines)


if __name__ == "__main__":
    import sys
    if sys.argv[1:] != ["bn-sweep"]:
        sys.exit("usage: python -m minidl.benchmarks.cases bn-sweep")
    print(bn_threshold_sweep())
