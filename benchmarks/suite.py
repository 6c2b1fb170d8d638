"""The runs behind `minidl bench`: the fixed suite, single shapes from the command line,
and the comparison of two runs. Every run measures the machine's limits and writes the
same JSON schema (documented in benchmarks/README.md) and a Markdown report.

    python -m minidl.benchmarks.suite [--suite kernels|train|all] [--threads N] [--quick]
                               [--only conv2d,...] [--backend numpy,torch]
                               [--json FILE] [--markdown FILE]

Suites:
  kernels  machine limits (FMA peak and GEMM GFLOP/s, copy/triad GB/s), every kernel against
           NumPy and PyTorch (benchmarks/cases.py), and the cold/warm JIT time of all kernels
           (benchmarks/compile_time.py; not with --quick)
  train    full training steps against PyTorch (benchmarks/cases.py) and the cold (empty
           Numba cache) and warm start of `minidl train` (not with --quick)
  all      both

--quick runs tiny shapes with the harness's smallest calibration: it checks that the
harness works, in seconds; its numbers say little about the machine.

Imports flow one way: suite -> cases -> harness and suite -> report -> harness.
"""
from __future__ import annotations

from minidl.benchmarks.harness import clean_blas_env

clean_blas_env()  # before NumPy loads OpenBLAS (if it has not yet); reported in the result

import contextlib  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from minidl.benchmarks import cases, harness, report  # noqa: E402

SUITES = ("kernels", "train", "all")
BACKENDS = cases.BACKENDS
STARTUP_ARGS = ["train", "--bn", "--dataset", "fashion-mnist", "--steps", "1", "--eval-every",
                "1", "--no-progress"]


def log(msg):
    """Progress on stderr: stdout carries the report."""
    print(msg, file=sys.stderr, flush=True)


# --- kernels ------------------------------------------------------------------------------

def time_local(case_list, mode="full", backends=BACKENDS, progress=None) -> list[dict]:
    """minidl's backends (and the NumPy reference) on every case, in this process."""
    repeats, min_sample, budget = harness.MODES[mode]
    out = []
    for i, case in enumerate(case_list):
        if progress:
            progress(f"[{i + 1}/{len(case_list)}] {case.kernel} {case.case} {case.pass_}")
        res = {}
        for backend in (b for b in case.backends if b in backends):
            if mode == "full":
                time.sleep(harness.BLAS_SPIN_S)
            # the reference is slow and only a yardstick: half the budget
            b = budget / 2 if backend == "numpy" else budget
            res[backend] = harness.measure(case.make(backend, "nchw"), repeats, min_sample, b)
        out.append(res)
    return out


def _torch_child(stack, use_torch, function):
    """(a torch child entered on `stack`, None) or (None, why not)."""
    if not use_torch:
        return None, None
    try:
        return stack.enter_context(harness.Child("minidl.benchmarks.cases", function)), None
    except RuntimeError as e:
        return None, str(e)


KERNEL_ROUNDS = 3  # full runs: passes over the whole kernels table (see run_kernels)


def _fastest(parts):
    """Of one backend's (or torch config's) timings in several rounds, the round with the
    lowest median, with every round's median recorded beside it."""
    best = dict(min(parts, key=lambda t: t["median_s"]))
    best["round_medians_s"] = [t["median_s"] for t in parts]
    if "first_call_s" in parts[0]:  # the first call is the first round's (JIT or cache load)
        best["first_call_s"] = parts[0]["first_call_s"]
    return best


def _typical(timing):
    """A timing's median over its rounds (the lower middle one), or its median."""
    rounds = sorted(timing.get("round_medians_s") or [timing["median_s"]])
    return rounds[(len(rounds) - 1) // 2]


def run_kernels(specs, threads, mode="full", backends=BACKENDS, progress=None,
                rounds=None) -> list[dict]:
    """Rows (dicts) of the kernels table for these specs, without rates (see annotate).
    Each case's torch timings are taken right after minidl's, by a torch child that
    stays up for the whole table (harness.Child): side by side in time, not a minute
    apart. Full runs go over the table KERNEL_ROUNDS times, and each side of a row keeps
    its fastest round: the host's speed swings by up to 2x for seconds at a time (a
    (64, 96, 7, 7) forward read 6.6 ms in one pass of a table, 3.4 ms in the others), so
    that minidl and torch are each compared at their best, not at the mercy of which
    one a slump hit. The NumPy reference, a yardstick only, runs in the first round."""
    case_list = [cases.build(s) for s in specs]
    use_torch = "torch" in backends and harness.torch_available()
    rounds = rounds or (KERNEL_ROUNDS if mode == "full" else 1)
    local_runs = [[] for _ in case_list]
    torch_runs = [[] for _ in case_list]
    with contextlib.ExitStack() as stack:
        child, torch_error = _torch_child(stack, use_torch, "torch_worker")
        for rnd in range(rounds):
            mine = backends if rnd == 0 else tuple(b for b in backends if b != "numpy")
            for i, (case, spec) in enumerate(zip(case_list, specs)):
                if progress:
                    progress(f"[{i + 1}/{len(case_list)}"
                             + (f", round {rnd + 1}/{rounds}" if rounds > 1 else "")
                             + f"] {case.kernel} {case.case} {case.pass_}")
                local_runs[i] += time_local([case], mode, mine)
                if child is None or torch_error:
                    continue
                if mode == "full":
                    time.sleep(harness.BLAS_SPIN_S)
                try:
                    torch_runs[i].append(child.call({
                        "mode": mode, "specs": [spec],
                        "torch_threads": sorted({1, threads})})[0])
                except RuntimeError as e:
                    torch_error = str(e)
    local = [{b: _fastest([run[b] for run in runs if b in run]) for b in runs[0]}
             for runs in local_runs]
    torch_res = [{c: _fastest([run[c] for run in runs]) for c in runs[0]} if runs else None
                 for runs in torch_runs]
    rows = []
    for case, loc, tor in zip(case_list, local, torch_res):
        row = {"kernel": case.kernel, "case": case.case, "pass": case.pass_,
               "dtype": case.dtype, "spec": case.spec, "bound": case.bound, "unit": case.unit,
               "work": case.work, "minidl_impl": case.minidl_impl, "threads": threads,
               "numba": loc["numba"], "numpy": loc.get("numpy"), "torch": None,
               "torch_configs": None, "rounds": rounds}
        for extra in ("numba_old", "numba_nhwc"):  # conv2d: old routes, NHWC entry points
            if extra in loc:
                row[extra] = loc[extra]
        if tor:
            # torch's best configuration by its typical round (the median of its rounds'
            # medians), then that configuration's fastest round: the minimum over all
            # configurations and rounds (12 chances against minidl's 3) would favour
            # torch with whichever configuration the noise flattered
            best = min(tor, key=lambda c: _typical(tor[c]))
            row["torch"] = dict(tor[best], config=best)
            row["torch_configs"] = {c: t["median_s"] for c, t in tor.items()}
        elif torch_error:
            row["torch_error"] = torch_error[-500:]
        rows.append(row)
    return rows


def annotate(rows, limits):
    """Add numba's achieved rate, its fraction of the machine limit and the ratios."""
    for r in rows:
        t = r["numba"]["median_s"]
        r["rate"] = r["work"] / t / 1e9
        compute = limits.get("fma_peak_gflops") or limits["gemm_gflops"]
        r["limit"] = compute if r["bound"] == "compute" else limits["copy_gbs"]
        r["fraction_of_limit"] = r["rate"] / r["limit"]
        r["torch_over_numba"] = r["torch"]["median_s"] / t if r["torch"] else None
        for extra in ("numba_old", "numba_nhwc"):
            if r.get(extra) and r["torch"]:
                r[f"torch_over_{extra}"] = r["torch"]["median_s"] / r[extra]["median_s"]
        r["numpy_over_numba"] = r["numpy"]["median_s"] / t if r["numpy"] else None
    return rows


# --- training steps -----------------------------------------------------------------------

TRAIN_ROUNDS = 3  # full runs: minidl and torch take turns this many times per case


def _merged(parts):
    """One timing from several rounds of the same measurement: the statistics of all
    their samples (each the mean step time over its round's calls_per_sample steps)."""
    samples = [x for p in parts for x in p["samples_s"]]
    return harness.summarize(samples, samples_s=samples,
                             steps=sum(p["samples"] * p["calls_per_sample"] for p in parts),
                             first_call_s=parts[0]["first_call_s"])


def run_train(threads, quick=False, use_torch=True, case_list=None) -> list[dict]:
    """One row per training case: minidl and (best) torch steps/s, their ratio. On a
    shared machine the speed of the host drifts over seconds, so minidl and torch take
    turns (TRAIN_ROUNDS rounds of a third of the samples each, every configuration in
    every round), and each side's statistics pool its rounds: both sides see the same
    stretch of time."""
    mode = "quick" if quick else "full"
    plan = list(case_list or cases.TRAIN_CASES)
    rounds = 1 if quick else TRAIN_ROUNDS
    repeats = None if quick else -(-cases.TRAIN_MODES["full"][0] // rounds)
    harness.warm_up_cores(threads)  # (after a one-core phase the first steps run slow)
    rows = []
    with contextlib.ExitStack() as stack:
        child, error = _torch_child(stack, use_torch and harness.torch_available(),
                                    "train_worker")
        if error:
            raise RuntimeError(error)
        for name, kind, batch in plan:
            # image models in both memory formats, as torch: the faster one is the row's
            formats = ("nchw", "channels_last") if kind in cases.IMAGE_MODELS else ("nchw",)
            mine, theirs = {f: [] for f in formats}, {}
            for _ in range(rounds):
                for f in formats:
                    mine[f].append(cases.time_minidl_step(kind, batch, threads, mode,
                                                          f == "channels_last", repeats))
                if child is None:
                    continue
                answer = child.call({"cases": [[name, kind, batch]], "mode": mode,
                                     "threads": sorted({1, threads}), "repeats": repeats})
                for c, r in answer[name].items():
                    theirs.setdefault(c, []).append(r)
                if mode == "full":  # (torch's idle OpenMP workers spin a while)
                    time.sleep(harness.BLAS_SPIN_S)
            configs = {f: _merged(parts) for f, parts in mine.items()}
            best = min(configs, key=lambda f: configs[f]["median_s"])
            t = configs[best]
            row = {"case": name, "batch": batch, "threads": threads, "minidl": t,
                   "minidl_steps_s": 1 / t["median_s"], "minidl_min_steps_s": 1 / t["q3_s"],
                   "minidl_max_steps_s": 1 / t["q1_s"],
                   "minidl_config": best if len(formats) > 1 else "-",
                   "minidl_configs": {f: 1 / r["median_s"] for f, r in configs.items()},
                   "steps": t["steps"], "rounds": rounds,
                   "minidl_first_step_s": configs["nchw"]["first_call_s"]}
            rows.append(row)
            if not theirs:
                continue
            tc = {c: dict(_merged(parts), threads=parts[0]["threads"])
                  for c, parts in theirs.items()}
            best = min(tc, key=lambda c: tc[c]["median_s"])
            row.update(torch=tc[best], torch_steps_s=1 / tc[best]["median_s"],
                       torch_threads=tc[best]["threads"], torch_config=best,
                       torch_configs={c: 1 / r["median_s"] for c, r in tc.items()},
                       ratio_vs_torch=row["minidl_steps_s"] * tc[best]["median_s"])
    harness.set_threads(threads)
    return rows


def startup_times(threads, warm_runs=3, command=None):
    """Wall time of a whole `minidl train` process: cold (an empty NUMBA_CACHE_DIR, so
    every kernel it needs is JIT-compiled) and warm (the same cache, now on disk)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(tmp, "numba_cache"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (harness.ROOT, env.get("PYTHONPATH"))
                                            if p)
        walls = []
        for i in range(1 + warm_runs):
            cmd = command or [sys.executable, "-m", "minidl.cli", *STARTUP_ARGS, "--threads",
                              str(threads), "--out", os.path.join(tmp, f"run{i}")]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            walls.append(time.perf_counter() - t0)
            if res.returncode != 0:
                return {"error": (res.stderr or res.stdout)[-1000:], "command": cmd}
    warm = sorted(walls[1:])
    shown = (f"minidl {' '.join(STARTUP_ARGS)} --threads {threads} --out TMP" if command is None
             else " ".join(command))
    return {"cold_s": walls[0], "warm_s": warm[len(warm) // 2], "warm_runs_s": walls[1:],
            "command": shown}


def compile_times():
    """Cold and warm first calls of every kernel in float32 and float64."""
    from minidl.benchmarks import compile_time
    try:
        return compile_time.measure()
    except subprocess.CalledProcessError as e:
        return {"error": (e.stderr or "")[-1000:]}


# --- whole runs ---------------------------------------------------------------------------

def _start(suite, threads, quick, backends):
    """The result's header, threads set and checked; the machine described."""
    import numba
    threads = threads or numba.config.NUMBA_NUM_THREADS
    if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"--threads {threads}: Numba allows 1 to "
                         f"{numba.config.NUMBA_NUM_THREADS} (set NUMBA_NUM_THREADS for more)")
    harness.set_threads(threads)  # the limits are measured at the kernels' thread count
    return {"schema": harness.SCHEMA, "suite": suite, "quick": quick, "threads": threads,
            "backends": list(backends),
            "torch_installed": "torch" in backends and harness.torch_available(),
            "machine": harness.describe_machine(threads)}


def _timed(wall, name, fn, *args, **kwargs):
    log(f"minidl bench: {name}...")
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    wall[name] = time.perf_counter() - t0
    return out


def _finish(result, wall, t_start):
    wall["total"] = time.perf_counter() - t_start
    result["wall_seconds"] = wall
    result["machine"]["load_average_after"] = harness.load_average()
    return result


def run(suite="all", threads=None, quick=False, families=cases.FAMILIES, torch=True,
        backends=BACKENDS):
    """The fixed suite, as one JSON-able dict."""
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, not {suite!r}")
    if not torch:
        backends = tuple(b for b in backends if b != "torch")
    t_start, wall = time.perf_counter(), {}
    result = _start(suite, threads, quick, backends)
    threads = result["threads"]
    result["limits"] = _timed(wall, "limits", harness.limits, quick)
    if suite in ("kernels", "all"):
        specs = cases.suite_specs(quick, families)
        rows = _timed(wall, "kernels", run_kernels, specs, threads,
                      "quick" if quick else "full", backends, progress=log)
        result["kernels"] = annotate(rows, result["limits"])
    if suite in ("train", "all"):
        result["train"] = _timed(wall, "train", run_train, threads, quick,
                                 "torch" in backends)
    # last: these run child processes that keep one core busy for minutes, after which
    # the first parallel timings of this process ran slow (see harness.warm_up_cores)
    if not quick and suite in ("kernels", "all"):
        result["compile"] = _timed(wall, "compile", compile_times)
    if not quick and suite in ("train", "all"):
        result["startup"] = _timed(wall, "startup", startup_times, threads)
    return _finish(result, wall, t_start)


def run_single(specs, threads=None, quick=False, backends=BACKENDS):
    """Single shapes from the command line: the same schema, suite "single"."""
    t_start, wall = time.perf_counter(), {}
    result = _start("single", threads, quick, backends)
    result["limits"] = _timed(wall, "limits", harness.limits, quick)
    rows = _timed(wall, "kernels", run_kernels, specs, result["threads"],
                  "quick" if quick else "full", backends, progress=log)
    result["kernels"] = annotate(rows, result["limits"])
    return _finish(result, wall, t_start)


def _write(result, json_path, markdown_path):
    text = report.markdown(result)
    if json_path:
        report.write_json(result, json_path)
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(text)
    print(text)
    return 0


def main_with(suite="all", threads=None, quick=False, json_path=None, markdown_path=None,
              families=cases.FAMILIES, backends=BACKENDS) -> int:
    return _write(run(suite, threads, quick, families, backends=backends), json_path,
                  markdown_path)


def main_single(specs, threads=None, quick=False, json_path=None, markdown_path=None,
                backends=BACKENDS) -> int:
    return _write(run_single(specs, threads, quick, backends), json_path, markdown_path)


def main_compare(old_path, new_path, fail_on_slower=None, markdown_path=None) -> int:
    """`minidl bench compare`: print the table; 1 if a row got slower by >= fail_on_slower %."""
    old, new = report.load_result(old_path), report.load_result(new_path)
    comparison = report.compare(old, new)
    text = report.compare_markdown(comparison, old_path, new_path, fail_on_slower)
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(text)
    print(text)
    return 1 if report.slower_rows(comparison, fail_on_slower) else 0


def main(argv=None) -> int:
    """`python -m minidl.benchmarks.suite ...`: the same arguments as `minidl bench`."""
    from minidl.bench import build_parser, run as bench_run
    return bench_run(build_parser("python -m minidl.benchmarks.suite").parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
