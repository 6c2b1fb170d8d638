"""Writers for a benchmark result (benchmarks.suite.run): JSON for machines, Markdown for
people. Markdown tables also read well in a terminal, so the CLI prints that."""
from __future__ import annotations

import json
import math


def _clean(v):
    """JSON-safe: tuples become lists, NaN and infinities become null."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):  # NumPy scalars
        return _clean(v.item())
    return v


def write_json(result, path):
    with open(path, "w") as f:
        json.dump(_clean(result), f, indent=1, allow_nan=False)
        f.write("\n")


def _num(v, unit=""):
    """Three significant figures, without exponents for everyday magnitudes."""
    if v is None:
        return "-"
    s = f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return s + unit


def _ms(seconds):
    return _num(None if seconds is None else seconds * 1e3)


def _table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _machine(result):
    m, v = result["machine"], result["machine"]["versions"]
    torch = (f"torch {v['torch']} (in child processes)" if v.get("torch")
             else "torch not installed (no comparison)")
    removed = m["env"]["removed_for_this_run"]
    malloc_too = (" (torch's processes too)" if any(k.startswith("MALLOC_") for k in
                                                   m["env"].get("torch_children", {})) else "")
    quick = " (--quick: tiny shapes, numbers say little)" if result["quick"] else ""
    wall = result["wall_seconds"]
    parts = ", ".join(f"{k} {s:.0f} s" for k, s in wall.items() if k != "total")
    return [
        f"- Date: {m['date']}",
        f"- CPU: {m['cpu']}, {m['cores']} logical cores ({m['usable_cores']} usable); "
        f"{m['platform']}",
        f"- BLAS: {m['blas']}; Numba threading layer: {m['numba_threading_layer']}; "
        f"OMP_WAIT_POLICY={m['env']['OMP_WAIT_POLICY']} for minidl (torch: its default); "
        f"malloc: {m['malloc_tuning']}{malloc_too}"
        + (f"; unset for this run: {', '.join(removed)}" if removed else ""),
        f"- Versions: Python {v['python']}, NumPy {v['numpy']}, Numba {v['numba']}, "
        f"SciPy {v['scipy']}, minidl {v['minidl']}, {torch}",
        f"- Threads: {result['threads']} for Numba, NumPy's BLAS and torch (torch also at 1 "
        "thread: its fastest setting is kept)",
        f"- Suite: {result['suite']}{quick}; wall time {wall['total']:.0f} s ({parts})",
    ]


def _limits(lim):
    fma = lim.get("fma_peak_gflops")
    return ["## Machine limits, measured in this run", ""] + _table(
        (["float32 FMA peak (the compute limit)"] if fma else [])
        + [f"float32 GEMM, NumPy's BLAS (n={lim['gemm_n']})",
           f"copy ({lim['bandwidth_mib']} MiB, Numba)", "triad (Numba)"],
        [([_num(fma, " GFLOP/s")] if fma else [])
         + [_num(lim["gemm_gflops"], " GFLOP/s"), _num(lim["copy_gbs"], " GB/s"),
            _num(lim["triad_gbs"], " GB/s")]])


def _kernels(rows, quick):
    from benchmarks.kernels import MODES
    repeats, min_sample, budget = MODES["quick" if quick else "full"]
    head = ["kernel", "case", "pass", "numba ms", "IQR ms", "numpy ms", "torch ms",
            "torch best config", "numba rate", "% of limit", "torch / numba", "numba 1st call ms"]
    body = []
    for r in rows:
        nb, tor = r["numba"], r["torch"]
        impl = "" if r["minidl_impl"] == "numba" else " *"
        body.append([
            r["kernel"], r["case"], r["pass"], _ms(nb["median_s"]) + impl,
            f"{_ms(nb['q1_s'])}-{_ms(nb['q3_s'])}", _ms(r["numpy"] and r["numpy"]["median_s"]),
            _ms(tor and tor["median_s"]), tor["config"] if tor else "-",
            _num(r["rate"], " " + r["unit"]), _num(100 * r["fraction_of_limit"], "%"),
            _num(r["torch_over_numba"]), _ms(nb["first_call_s"])])
    first = sum(r["numba"]["first_call_s"] for r in rows)
    conv = [r for r in rows if r.get("numba_old") or r.get("numba_nhwc")]
    routes = [] if not conv else ["", "### conv2d: routes side by side (same run)", ""] + _table(
        ["case", "pass", "numba ms (default)", "old routes ms", "NHWC entry ms", "torch ms",
         "torch / numba", "torch / old", "torch / NHWC", "numba % of FMA peak"],
        [[r["case"], r["pass"], _ms(r["numba"]["median_s"]),
          _ms(r.get("numba_old") and r["numba_old"]["median_s"]),
          _ms(r.get("numba_nhwc") and r["numba_nhwc"]["median_s"]),
          _ms(r["torch"] and r["torch"]["median_s"]), _num(r["torch_over_numba"]),
          _num(r.get("torch_over_numba_old")), _num(r.get("torch_over_numba_nhwc")),
          _num(100 * r["fraction_of_limit"], "%")] for r in conv]) + [
        "", "old routes: kernels/cpu/conv2d.py with the channels-last kernels switched off "
        "(im2col + BLAS, conv2d_direct); NHWC entry: conv2d_nhwc's functions on NHWC "
        "arrays (no layout conversion: what a channels_last tensor would run)."]
    notes = [
        "", f"Median of {repeats} samples (a sample repeats a call enough to last "
        f"{1e3 * min_sample:g} ms; at least 3 samples, fewer than {repeats} past a {budget:g} s "
        "budget; numpy: half of it); IQR: first to third quartile. GFLOP/s for conv2d "
        "(2*N*K*Ho*Wo*C*R*S per pass) and matmul, judged against the FMA peak; GB/s of the "
        "bytes a pass must move (batch norm forward: x, y; backward: x, dy, dx; pooling: x, y, "
        "and max pooling's int64 argmax) judged against copy bandwidth, which small inputs "
        "that stay in cache can exceed. torch / numba > 1: numba is faster. The first layer "
        "(C=1) needs no input gradient: no backward_input row.",
        "* matmul: minidl calls NumPy's BLAS; that is the numba column.",
        f"numba first calls (JIT compile or cache load; not in the medians): {first:.2f} s in "
        "all.",
    ]
    return ["## Kernels (float32)", ""] + _table(head, body) + notes + routes


def _compile(c):
    if "error" in c:
        return ["", f"JIT compile of all kernels failed: {c['error']}"]
    return ["", "### JIT compile time (benchmarks/compile_time.py)", ""] + _table(
        ["every kernel, float32 + float64, first calls", "cold: empty Numba cache",
         "warm: cache on disk"],
        [["kernels / whole process", f"{c['cold']['kernels_s']:.1f} s / "
          f"{c['cold']['process_wall_s']:.1f} s", f"{c['warm']['kernels_s']:.1f} s / "
          f"{c['warm']['process_wall_s']:.1f} s"]])


def _train(rows):
    head = ["model", "batch", "minidl steps/s", "min-max", "torch steps/s", "torch best config",
            "minidl / torch", "minidl 1st step s"]
    body = [[r["case"], r["batch"], _num(r["minidl_steps_s"]),
             f"{_num(r['minidl_min_steps_s'])}-{_num(r['minidl_max_steps_s'])}",
             _num(r.get("torch_steps_s")), r.get("torch_config", "-"),
             _num(r.get("ratio_vs_torch")), _num(r["minidl_first_step_s"])] for r in rows]
    return (["## Training steps (forward, backward, SGD momentum)", ""] + _table(head, body)
            + ["", f"Steps/s over {' or '.join(sorted({str(r['steps']) for r in rows}))} "
               "steps (the CNN's are slower: fewer) after warm-up; min-max over 5 blocks. "
               "minidl / torch > 1: minidl is faster."])


def _startup(s):
    if "error" in s:
        return ["", f"`minidl train` start-up could not be timed: {s['error']}"]
    return ["", "### Start-up of `minidl train` (wall time of the whole process)", ""] + _table(
        ["command", "cold: empty Numba cache (JIT)", "warm: cache on disk (median)"],
        [[f"`{s['command']}`", f"{s['cold_s']:.1f} s", f"{s['warm_s']:.1f} s"]])


def markdown(result) -> str:
    lines = ["# minidl benchmark", "",
             "Written by `minidl bench`. The measurements behind the kernels' design "
             "choices are in benchmarks/DESIGN.md.", ""]
    lines += _machine(result) + [""] + _limits(result["limits"])
    if "kernels" in result:
        lines += [""] + _kernels(result["kernels"], result["quick"])
    if "compile" in result:
        lines += _compile(result["compile"])
    if "train" in result:
        lines += [""] + _train(result["train"])
    if "startup" in result:
        lines += _startup(result["startup"])
    return "\n".join(lines) + "\n"
