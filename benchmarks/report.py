"""Writers and readers of a benchmark result (minidl.benchmarks.suite.run, schema in
benchmarks/README.md): JSON for machines, Markdown for people (tables also read well in a
terminal, so the CLI prints that), and the comparison of two results
(`minidl bench compare OLD.json NEW.json`). Imports only minidl.benchmarks.harness."""
from __future__ import annotations

import json
import math

from minidl.benchmarks.harness import MODES, SPREAD_WARN


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
    quick = (f" (--quick: {'' if result['suite'] == 'single' else 'tiny shapes, '}the "
             "smallest calibration; numbers say little)" if result["quick"] else "")
    wall = result["wall_seconds"]
    parts = ", ".join(f"{k} {s:.0f} s" for k, s in wall.items() if k != "total")
    return [
        f"- Date: {m['date']}",
        f"- CPU: {m['cpu']}, {m['cores']} logical cores ({m['usable_cores']} usable); "
        f"{m['platform']}" + (f"; flags {' '.join(m['cpu_flags'])}" if m.get("cpu_flags")
                              else ""),
        f"- Load average (1, 5, 15 min): {_load(m.get('load_average'))} at the start, "
        f"{_load(m.get('load_average_after'))} at the end",
        f"- BLAS: {m['blas']}; Numba threading layer: {m['numba_threading_layer']}; "
        f"OMP_WAIT_POLICY={m['env']['OMP_WAIT_POLICY']}"
        + (f", GOMP_SPINCOUNT={m['env']['GOMP_SPINCOUNT']}" if m["env"].get("GOMP_SPINCOUNT")
           else "") + " for minidl (torch: its defaults); "
        f"malloc: {m['malloc_tuning']}{malloc_too}"
        + (f"; unset for this run: {', '.join(removed)}" if removed else ""),
        f"- Versions: Python {v['python']}, NumPy {v['numpy']}, Numba {v['numba']}, "
        f"SciPy {v['scipy']}, minidl {v['minidl']}, {torch}",
        f"- Threads: {result['threads']} for Numba, NumPy's BLAS and torch (torch also at 1 "
        "thread: its fastest setting is kept); backends: "
        f"{', '.join(result.get('backends') or ['all'])}",
        f"- Suite: {result['suite']}{quick}; wall time {wall['total']:.0f} s ({parts})",
    ]


def _load(avg):
    return "unknown" if not avg else ", ".join(f"{v:g}" for v in avg)


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
    repeats, min_sample, budget = MODES["quick" if quick else "full"]
    head = ["kernel", "case", "pass", "numba ms", "IQR ms", "numpy ms", "torch ms",
            "torch best config", "numba rate", "% of limit", "torch / numba", "numba 1st call ms"]
    body = []
    for r in rows:
        nb, tor = r["numba"], r["torch"]
        impl = " *" if r["minidl_impl"] == "NumPy BLAS" else ""
        body.append([
            r["kernel"], r["case"], r["pass"], _ms(nb["median_s"]) + impl,
            f"{_ms(nb['q1_s'])}-{_ms(nb['q3_s'])}", _ms(r["numpy"] and r["numpy"]["median_s"]),
            _ms(tor and tor["median_s"]), tor["config"] if tor else "-",
            _num(r["rate"], " " + r["unit"]), _num(100 * r["fraction_of_limit"], "%"),
            _num(r["torch_over_numba"]), _ms(nb["first_call_s"])])
    first = sum(r["numba"]["first_call_s"] for r in rows)
    conv = [r for r in rows if r.get("numba_old") or r.get("numba_nhwc")]
    title = "### Routes and layouts side by side (same run)"
    routes = [] if not conv else ["", title, ""] + _table(
        ["case", "pass", "numba ms (default)", "old routes ms", "NHWC entry ms", "torch ms",
         "torch / numba", "torch / old", "torch / NHWC", "numba % of limit"],
        [[f"{r['kernel']} {r['case']}", r["pass"], _ms(r["numba"]["median_s"]),
          _ms(r.get("numba_old") and r["numba_old"]["median_s"]),
          _ms(r.get("numba_nhwc") and r["numba_nhwc"]["median_s"]),
          _ms(r["torch"] and r["torch"]["median_s"]), _num(r["torch_over_numba"]),
          _num(r.get("torch_over_numba_old")), _num(r.get("torch_over_numba_nhwc")),
          _num(100 * r["fraction_of_limit"], "%")] for r in conv]) + [
        "", "old routes: kernels/cpu/conv2d.py with the channels-last kernels switched off "
        "(im2col + BLAS, conv2d_direct); NHWC entry: the channels-last kernels on NHWC "
        "arrays, as a channels_last tensor runs them with no layout conversion (conv2d_nhwc's "
        "functions; batch norm on the (N*H*W, C) rows; pooling_nhwc's entry points)."]
    notes = [
        "", f"Median of {repeats} samples after a warm-up that calibrates the calls per "
        f"sample (a sample repeats a call enough to last {1e3 * min_sample:g} ms; warm-up "
        f"excluded: {sum(r['numba'].get('warmup_s', 0) for r in rows):.2f} s of numba calls in "
        f"all; at least 3 samples, fewer than {repeats} past a {budget:g} s "
        "budget; numpy: half of it); IQR: first to third quartile. GFLOP/s for conv2d "
        "(2*N*K*Ho*Wo*C*R*S per pass) and matmul, judged against the FMA peak; GB/s of the "
        "bytes a pass must move (batch norm forward: x, y; backward: x, dy, dx; pooling: x, y, "
        "and max pooling's int64 argmax) judged against copy bandwidth, which small inputs "
        "that stay in cache can exceed. torch / numba > 1: numba is faster."
        + (f" Each side of a row (every minidl column, each torch configuration) keeps its "
           f"fastest of {rows[0]['rounds']} rounds over the whole table (the host's speed "
           "swings for seconds at a time); every round's median is in the JSON "
           "(round_medians_s)." if rows and rows[0].get("rounds", 1) > 1 else "")
        + (" The first layer (C=1) needs no input gradient: no backward_input row."
           if any(", 1, " in r["case"] for r in rows if r["kernel"] == "conv2d") else ""),
    ] + (["* matmul: minidl calls NumPy's BLAS; that is the numba column."]
         if any(r["minidl_impl"] == "NumPy BLAS" for r in rows) else []) + [
        f"numba first calls (JIT compile or cache load; not in the medians): {first:.2f} s in "
        "all.",
    ] + _spread_warning([(f"{r['kernel']} {r['case']} {r['pass']}", r["numba"]) for r in rows])
    dtypes = ", ".join(sorted({r.get("dtype", "float32") for r in rows}))
    return [f"## Kernels ({dtypes})", ""] + _table(head, body) + notes + routes


def _spread_warning(labelled):
    """A line naming the (label, timing) pairs whose samples disagree too much."""
    noisy = [label for label, t in labelled if t and t.get("unstable")]
    if not noisy:
        return []
    return [f"WARNING: spread too wide to conclude (IQR > {100 * SPREAD_WARN:g}% of the "
            f"median) on {len(noisy)} row(s): {'; '.join(noisy)}. Rerun on a quieter "
            "machine or with fewer threads."]


def _compile(c):
    if "error" in c:
        return ["", f"JIT compile of all kernels failed: {c['error']}"]
    return ["", "### JIT compile time (benchmarks/compile_time.py)", ""] + _table(
        ["every kernel, float32 + float64, first calls", "cold: empty Numba cache",
         "warm: cache on disk"],
        [["kernels / whole process", f"{c['cold']['kernels_s']:.1f} s / "
          f"{c['cold']['process_wall_s']:.1f} s", f"{c['warm']['kernels_s']:.1f} s / "
          f"{c['warm']['process_wall_s']:.1f} s"]]) + _compile_breakdown(c["cold"])


COMPILE_TOP = 12  # kernels named in the compile-time breakdown


def _compile_breakdown(cold):
    """The kernels that take longest to compile cold (both dtypes, all signatures; a
    kernel's callees count for it)."""
    top = list(cold.get("by_kernel_s", {}).items())[:COMPILE_TOP]
    if not top:
        return []
    rest = cold["kernels_s"] - sum(s for _, s in top)
    return ["", "Slowest to compile (cold, seconds, float32 + float64): " + ", ".join(
        f"{name} {sec:.1f}" for name, sec in top) + f"; everything else {rest:.1f}."]


def _train(rows):
    head = ["model", "batch", "minidl steps/s", "min-max", "minidl format (nchw / cl steps/s)",
            "torch steps/s", "torch best config", "minidl / torch", "minidl 1st step s"]

    def fmt(r):
        configs = r.get("minidl_configs") or {}
        if len(configs) < 2:
            return "-"
        return (f"{r['minidl_config']} ({_num(configs['nchw'])} / "
                f"{_num(configs['channels_last'])})")
    body = [[r["case"], r["batch"], _num(r["minidl_steps_s"]),
             f"{_num(r['minidl_min_steps_s'])}-{_num(r['minidl_max_steps_s'])}", fmt(r),
             _num(r.get("torch_steps_s")), r.get("torch_config", "-"),
             _num(r.get("ratio_vs_torch")), _num(r["minidl_first_step_s"])] for r in rows]
    return (["## Training steps (forward, backward, SGD momentum)", ""] + _table(head, body)
            + ["", "Steps/s: 1 / the median time of a step, over samples of "
               f"{' or '.join(sorted({str(r['steps']) for r in rows}))} steps in all after "
               "warm-up (benchmarks/harness.py)"
               + (f", taken in {rows[0]['rounds']} rounds in which minidl and torch take turns"
                  if rows and rows[0].get("rounds", 1) > 1 else "")
               + "; min-max: the steps/s of the interquartile range. minidl / torch > 1: "
               "minidl is faster."]
            + _spread_warning([(r["case"], r.get("minidl")) for r in rows]))


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


# --- comparing two runs -------------------------------------------------------------------

SCHEMAS = ("minidl-bench/1", "minidl-bench/2")  # what `compare` reads


def load_result(path) -> dict:
    """A result written by `minidl bench --json`; a ValueError naming the file otherwise."""
    try:
        with open(path) as f:
            result = json.load(f)
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(result, dict) or result.get("schema") not in SCHEMAS:
        found = result.get("schema") if isinstance(result, dict) else type(result).__name__
        raise ValueError(f"{path}: not a minidl bench result (schema {found!r}, expected one "
                         f"of {', '.join(SCHEMAS)})")
    return result


def _timings(result) -> dict:
    """{row key: (median, q1, q3, unstable)} of minidl's side of every row, in seconds
    per call (kernels) or per step (training)."""
    out = {}
    for r in result.get("kernels") or []:
        t = r["numba"]
        out[(r["kernel"], r["case"], r["pass"], r.get("dtype", "float32"))] = (
            t["median_s"], t["q1_s"], t["q3_s"], bool(t.get("unstable")))
    for r in result.get("train") or []:
        key = ("train", r["case"], "step", "float32")
        if "minidl" in r:
            t = r["minidl"]
            out[key] = (t["median_s"], t["q1_s"], t["q3_s"], bool(t.get("unstable")))
        else:  # schema 1: steps/s and its min-max over blocks
            out[key] = (1 / r["minidl_steps_s"], 1 / r["minidl_max_steps_s"],
                        1 / r["minidl_min_steps_s"], False)
    return out


def verdict(old, new) -> str:
    """faster / slower when the two runs' interquartile ranges do not overlap; otherwise
    no significant change (a shift inside the noise of either run is not a change)."""
    if new[1] > old[2]:
        return "slower"
    if new[2] < old[1]:
        return "faster"
    return "no significant change"


def _mismatches(old, new) -> list[str]:
    """What differs between the two runs' machines, libraries and threads."""
    mo, mn = old.get("machine", {}), new.get("machine", {})
    pairs = [("CPU", mo.get("cpu"), mn.get("cpu")),
             ("cores", mo.get("cores"), mn.get("cores")),
             ("usable cores", mo.get("usable_cores"), mn.get("usable_cores")),
             ("BLAS", mo.get("blas"), mn.get("blas")),
             ("Numba threading layer", mo.get("numba_threading_layer"),
              mn.get("numba_threading_layer")),
             ("threads", old.get("threads"), new.get("threads")),
             ("--quick", old.get("quick"), new.get("quick"))]
    if mo.get("cpu_flags") is not None and mn.get("cpu_flags") is not None:
        pairs.append(("CPU flags", " ".join(mo["cpu_flags"]), " ".join(mn["cpu_flags"])))
    vo, vn = mo.get("versions", {}), mn.get("versions", {})
    pairs += [(name, vo.get(name), vn.get(name)) for name in sorted(set(vo) | set(vn))]
    return [f"{name}: {a} vs {b}" for name, a, b in pairs if a != b]


def compare(old, new) -> dict:
    """Row by row: the ratio of medians NEW / OLD and its noise-aware verdict."""
    to, tn = _timings(old), _timings(new)
    rows = []
    for key in [k for k in to if k in tn]:
        rows.append({"kernel": key[0], "case": key[1], "pass": key[2], "dtype": key[3],
                     "old": to[key], "new": tn[key], "ratio": tn[key][0] / to[key][0],
                     "verdict": verdict(to[key], tn[key]),
                     "noisy": to[key][3] or tn[key][3]})
    return {"rows": rows, "only_old": [k for k in to if k not in tn],
            "only_new": [k for k in tn if k not in to], "mismatches": _mismatches(old, new)}


def slower_rows(comparison, pct) -> list:
    """The rows judged slower by at least `pct` percent (none when pct is None)."""
    if pct is None:
        return []
    return [r for r in comparison["rows"]
            if r["verdict"] == "slower" and (r["ratio"] - 1) * 100 >= pct]


def compare_markdown(comparison, old_name="OLD", new_name="NEW", fail_on_slower=None) -> str:
    lines = [f"# minidl bench compare: {old_name} -> {new_name}", ""]
    if comparison["mismatches"]:
        lines += ["WARNING: the two runs are not comparable in: "
                  + "; ".join(comparison["mismatches"]), ""]
    body = [[r["kernel"], r["case"], r["pass"], r["dtype"],
             f"{_ms(r['old'][0])} ({_ms(r['old'][1])}-{_ms(r['old'][2])})",
             f"{_ms(r['new'][0])} ({_ms(r['new'][1])}-{_ms(r['new'][2])})",
             f"{r['ratio']:.3f}", r["verdict"] + (" (noisy)" if r["noisy"] else "")]
            for r in comparison["rows"]]
    lines += _table(["kernel", "case", "pass", "dtype", "old ms (IQR)", "new ms (IQR)",
                     "new / old", "verdict"], body)
    counts = {v: sum(r["verdict"] == v for r in comparison["rows"])
              for v in ("faster", "slower", "no significant change")}
    lines += ["", f"{len(comparison['rows'])} rows: " + ", ".join(
        f"{n} {v}" for v, n in counts.items()) + ". new / old < 1: faster. A verdict needs "
        "the two interquartile ranges apart; (noisy): a run's IQR exceeds "
        f"{100 * SPREAD_WARN:g}% of its median."]
    for label, keys in (("only in the old run", comparison["only_old"]),
                        ("only in the new run", comparison["only_new"])):
        if keys:
            lines.append(f"{len(keys)} rows {label}: " + "; ".join(" ".join(k[:3]) for k in keys))
    if fail_on_slower is not None:
        bad = slower_rows(comparison, fail_on_slower)
        lines.append(f"--fail-on-slower {fail_on_slower:g}: " + (
            f"FAIL, {len(bad)} row(s) slower by {fail_on_slower:g}% or more" if bad else "pass"))
    return "\n".join(lines) + "\n"
