"""Cold and warm start of the Numba kernels: every kernel family called once in float32
and float64 in a fresh process, first with an empty Numba cache (JIT compilation and
cache writes), then again with the cache on disk (`cache=True`: loads only).

    python -m minidl.benchmarks.compile_time
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

PREAMBLE = r"""
import json
import time
t0 = time.perf_counter()
import numpy as np
from numba.core import event
import minidl.kernels.cpu as K
from minidl.kernels.cpu import conv2d_nhwc as NHWC
t_import = time.perf_counter() - t0


class Compiles(event.Listener):
    # Seconds of each outermost compilation (callees compiled on the way count for
    # their caller), summed per kernel over its dtypes and signatures.
    def __init__(self):
        self.starts, self.by_kernel = [], {}

    def on_start(self, ev):
        self.starts.append(time.perf_counter())

    def on_end(self, ev):
        dt = time.perf_counter() - self.starts.pop()
        if not self.starts:
            f = ev.data["dispatcher"].py_func
            name = f.__module__.rsplit(".", 1)[-1] + "." + f.__name__
            self.by_kernel[name] = self.by_kernel.get(name, 0.0) + dt


compiles = Compiles()
event.register("numba:compile", compiles)
"""

# Every kernel family in float32 and float64, through the public entry points.
WORKLOAD = r"""
rng = np.random.default_rng(0)
for dt in (np.float32, np.float64):
    x = rng.standard_normal((4, 6, 9, 9)).astype(dt)
    w = rng.standard_normal((8, 3, 3, 3)).astype(dt)
    b = np.zeros(8, dt)
    y = K.conv2d_forward(x, w, b, (1, 1), (1, 1), (1, 1), 2)  # im2col + BLAS (groups)
    K.conv2d_backward_input(y, w, x.shape, (1, 1), (1, 1), (1, 1), 2)
    K.conv2d_backward_weight(y, x, w.shape, (1, 1), (1, 1), (1, 1), 2)
    K.conv2d_backward_bias(y)
    for c_in, stride in ((6, (1, 1)), (6, (2, 2)), (1, (1, 1))):  # direct: tiles, rows
        wd = rng.standard_normal((8, c_in, 3, 3)).astype(dt)
        xd = x[:, :c_in].copy()
        y = K.conv2d_forward(xd, wd, b, stride, (1, 1), (1, 1), 1)
        K.conv2d_backward_input(y, wd, xd.shape, stride, (1, 1), (1, 1), 1)
        K.conv2d_backward_weight(y, xd, wd.shape, stride, (1, 1), (1, 1), 1)
    # the channels-last kernels' NHWC entry points (the NCHW ones ran above: conv2d.py
    # routes groups=1 passes there)
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    wh = rng.standard_normal((8, 6, 3, 3)).astype(dt)
    for stride in ((1, 1), (2, 2)):
        y = NHWC.conv2d_forward_nhwc(xh, wh, b, stride, (1, 1), (1, 1))
        NHWC.conv2d_backward_input_nhwc(y, wh, xh.shape, stride, (1, 1), (1, 1))
        NHWC.conv2d_backward_weight_nhwc(y, xh, wh.shape, stride, (1, 1), (1, 1))
        NHWC.conv2d_backward_bias_nhwc(y)
    # serial and parallel paths
    for shape in ((4, 6, 9, 9), (64, 6, 40, 40), (60, 100), (20000, 100)):
        z = rng.standard_normal(shape).astype(dt)
        g, bt = np.ones(shape[1], dt), np.zeros(shape[1], dt)
        out, m, v = K.batch_norm_train_forward(z, g, bt, 1e-5)
        K.batch_norm_train_backward(out, z, g, m, v, 1e-5)
        K.batch_norm_eval_forward(z, g, bt, m, v, 1e-5)
        K.batch_norm_eval_backward(out, z, g, m, v, 1e-5)
        for act in ("relu", "sigmoid"):
            a = K.bias_act_forward(z, g, act)
            K.act_backward(a, a, act)
    y, idx = K.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), False)
    K.max_pool2d_backward(y, idx, x.shape)
    y = K.avg_pool2d_forward(x, (3, 3), (2, 2), (1, 1), False, True)
    K.avg_pool2d_backward(y, x.shape, (3, 3), (2, 2), (1, 1), False, True)
    K.global_avg_pool2d_backward(K.global_avg_pool2d_forward(x), x.shape)
    # channels_last pooling (NHWC entry points)
    for k, s in (((2, 2), (2, 2)), ((3, 3), (1, 1))):  # disjoint and overlapping windows
        y, idx = K.max_pool2d_forward_nhwc(xh, k, s, (1, 1), False)
        K.max_pool2d_backward_nhwc(y, idx, xh.shape, k, s, (1, 1))
    y = K.avg_pool2d_forward_nhwc(xh, (3, 3), (2, 2), (1, 1), False, True)
    K.avg_pool2d_backward_nhwc(y, xh.shape, (3, 3), (2, 2), (1, 1), False, True)
    y = K.avg_pool2d_forward_nhwc(xh, (2, 2), (2, 2), (0, 0), False, True)  # disjoint
    K.avg_pool2d_backward_nhwc(y, xh.shape, (2, 2), (2, 2), (0, 0), False, True)
"""

EPILOGUE = r"""
print(json.dumps({"import_s": t_import, "kernels_s": time.perf_counter() - t0,
                  "by_kernel": compiles.by_kernel}))
"""


def measure(workload=WORKLOAD) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        out = {}
        for label in ("cold", "warm"):
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", PREAMBLE + workload + EPILOGUE],
                                 env=env, cwd=root,
                                 capture_output=True, text=True, check=True)
            wall = time.perf_counter() - t0
            r = json.loads(res.stdout.strip().splitlines()[-1])
            out[label] = {"process_wall_s": wall, "import_s": r["import_s"],
                          "kernels_s": r["kernels_s"]}
            if label == "cold":  # where the compile time goes, slowest first
                out[label]["by_kernel_s"] = dict(sorted(r["by_kernel"].items(),
                                                        key=lambda kv: -kv[1]))
    return out


def main():
    res = measure()
    for label, r in res.items():
        print(f"{label}: all kernels, float32 + float64, first calls {r['kernels_s']:.1f} s "
              f"(import {r['import_s']:.2f} s), whole process {r['process_wall_s']:.1f} s")
    for name, sec in list(res["cold"]["by_kernel_s"].items())[:12]:
        print(f"  {sec:6.1f} s  {name}")


if __name__ == "__main__":
    main()
