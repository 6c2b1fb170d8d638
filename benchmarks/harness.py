"""The timing harness of `minidl bench`: how a number is taken, and on what machine.

Everything here is about *how* to time; *what* is timed lives in benchmarks/cases.py.
This module imports nothing else from `benchmarks` (imports flow one way:
suite -> cases -> harness, suite -> report -> harness).

One timing statistic, `measure(fn)`:

1. the first call is timed alone and reported (`first_call_s`: JIT compile or cache load);
2. warm-up: calls are repeated, doubling their number, until one batch of them lasts
   `min_sample` seconds; that number is `calls_per_sample` (so a microsecond kernel is
   not lost in the timer's resolution) and the warm-up's calls and seconds are reported
   (`warmup_calls`, `warmup_s`) but kept out of the statistics;
3. `repeats` samples, each the mean time of one call over `calls_per_sample` calls
   (at least 3 samples; fewer than `repeats` once `budget` seconds are spent);
4. the median, the quartiles q1 and q3 (interquartile range IQR = q3 - q1), min and max.
   `spread` = IQR / median; above SPREAD_WARN the row is flagged `unstable`: the
   samples disagree too much to conclude anything from a few percent.

Machine state (`describe_machine`) records the CPU model and its vector flags, cores,
thread counts, BLAS, library versions and the load average, so a comparison of two runs
(`minidl bench compare`) can say when they did not run on comparable machines.

torch is only ever imported in child processes (`Child`): imported here, its OpenMP
runtime would bind Numba's OpenMP layer to torch's settings and slow the numba kernels
(the measurements are in benchmarks/RESULTS.md, "Measured settings behind the harness").
"""
from __future__ import annotations

import ctypes
import datetime
import glob
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = "minidl-bench/2"
SPREAD_WARN = 0.10  # IQR / median above which a row is flagged unstable

# (repeats, min_sample seconds, budget seconds per row and backend)
MODES = {
    "full": (7, 0.01, 2.0),
    "quick": (3, 0.0005, 0.05),  # the smallest calibration: checks the harness, not speed
}

# OpenBLAS's worker threads spin a while after each multithreaded call before they
# sleep, and while they spin a parallel Numba kernel on the same cores runs slower.
# Whatever ran before (the numpy reference's matrix products) must not tax the kernel
# timed next: full runs wait this long between backends.
BLAS_SPIN_S = 0.12

BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
UNSET_VAR = "MINIDL_BENCH_UNSET"  # what a parent process unset for this one (JSON)
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", "asimd",
             "sve")


# --- environment, threads, BLAS ----------------------------------------------------------

REMOVED_ENV = {}  # what clean_blas_env unset in this process, for describe_machine


def clean_blas_env() -> dict:
    """Drop OpenBLAS tuning variables that can make NumPy's BLAS pick a slow kernel, for
    this process only. They are read when NumPy loads OpenBLAS, which importing minidl
    (and so any benchmark module) already did: if they are set, the process starts over
    once without them (os.execv of the same command line), passing down what it unset.
    Returns what was unset (and remembers it in REMOVED_ENV)."""
    removed = json.loads(os.environ.pop(UNSET_VAR, "{}"))  # from the process before
    stale = {var: os.environ[var] for var in BLAS_VARS if var in os.environ}
    if stale and "numpy" in sys.modules:
        env = {k: v for k, v in os.environ.items() if k not in stale}
        env[UNSET_VAR] = json.dumps({**removed, **stale})
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    for var in stale:
        removed[var] = os.environ.pop(var)
    REMOVED_ENV.update(removed)
    return removed


def _openblas():
    """A ctypes handle on the OpenBLAS bundled with NumPy's wheels, or None."""
    import numpy as np
    libdir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in glob.glob(os.path.join(libdir, "*openblas*")):
        try:
            return ctypes.CDLL(path)
        except OSError:
            pass
    return None


def _symbol(lib, stem):
    """OpenBLAS's `stem` function in `lib` under whichever name the build exports
    (NumPy's scipy-openblas64 and SciPy's scipy-openblas prefix and suffix it), or None."""
    for name in (f"scipy_{stem}64_", f"scipy_{stem}", f"{stem}64_", stem):
        fn = getattr(lib, name, None) if lib is not None else None
        if fn is not None:
            return fn
    return None


def openblas_call(stem, *args, restype=ctypes.c_int):
    """Call the `stem` function of NumPy's OpenBLAS."""
    fn = _symbol(_openblas(), stem)
    if fn is None:
        return None
    fn.restype = restype
    return fn(*args)


def blas_info() -> str:
    """NumPy's BLAS, with OpenBLAS's chosen kernel and thread count where readable."""
    from minidl.info import blas_info as name
    core = openblas_call("openblas_get_corename", restype=ctypes.c_char_p)
    if core is None:
        return name()
    return f"{name()}, kernel {core.decode()}, {openblas_call('openblas_get_num_threads')} threads"


def set_threads(threads: int) -> None:
    """Numba's threads and those of every OpenBLAS loaded in this process: NumPy's, and
    SciPy's, which the 1x1 convolutions call (a torch child sets its own)."""
    import numba
    import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS now, so that it is set too)
    from minidl.kernels import _openblas_libraries
    numba.set_num_threads(threads)
    libraries = _openblas_libraries()  # (empty where /proc/self/maps cannot be read)
    for lib in map(ctypes.CDLL, libraries):
        fn = _symbol(lib, "openblas_set_num_threads")
        if fn is not None:
            fn(ctypes.c_int(threads))
    if not libraries:
        openblas_call("openblas_set_num_threads", ctypes.c_int(threads))


def endless(loader):
    """The batches of `loader`, epoch after epoch, for a fixed number of steps."""
    while True:
        yield from loader


# --- the timing statistic ----------------------------------------------------------------

def measure(fn, repeats=7, min_sample=0.01, budget=2.0) -> dict:
    """Seconds per call of `fn()`: see the module docstring for the method.

    >>> t = measure(lambda: sum(range(100)), repeats=3, min_sample=0.0005, budget=0.05)
    >>> t["q1_s"] <= t["median_s"] <= t["q3_s"]
    True
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    inner, warm_calls, warm_s = 1, 0, 0.0
    while True:  # warm-up doubles as calibration
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        dt = time.perf_counter() - t0
        warm_calls, warm_s = warm_calls + inner, warm_s + dt
        if dt >= min_sample or inner >= 1 << 24:
            break
        inner *= 2 if dt <= 0 else max(2, min(16, int(min_sample / dt) + 1))
    samples = []
    deadline = time.perf_counter() + budget
    while len(samples) < repeats and (len(samples) < 3 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return summarize(samples, calls_per_sample=inner, first_call_s=first,
                     warmup_calls=warm_calls, warmup_s=warm_s, samples_s=samples)


def summarize(samples, **extra) -> dict:
    """Median, quartiles, min, max and the relative spread of per-call seconds."""
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive") \
        if len(samples) > 1 else (samples[0],) * 3
    spread = (q3 - q1) / median if median > 0 else 0.0
    return {"median_s": median, "q1_s": q1, "q3_s": q3, "min_s": min(samples),
            "max_s": max(samples), "samples": len(samples), "spread": spread,
            "unstable": spread > SPREAD_WARN, **extra}


# --- machine state ----------------------------------------------------------------------

def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_info() -> tuple[str, list]:
    """The CPU's model name and which of CPU_FLAGS it has (Linux /proc/cpuinfo)."""
    model, flags = None, []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    have = set(value.split())
                    flags = [f for f in CPU_FLAGS if f in have]
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def load_average():
    """The 1-, 5- and 15-minute load averages, or None where the OS does not say."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def describe_machine(threads) -> dict:
    """Who ran this: hardware, libraries, threads, load and the settings that change
    timings. torch's version comes from its metadata: this process never imports torch."""
    import numba
    import numpy as np

    import minidl
    from minidl import _malloc
    from minidl.info import threading_layer
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    cpu, flags = cpu_info()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(), "usable_cores": usable,
        "platform": platform.platform(), "load_average": load_average(),
        "blas": blas_info(), "numba_threading_layer": threading_layer(),
        "threads": threads,
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "numba": numba.__version__, "scipy": _version("scipy"),
                     "minidl": minidl.__version__, "torch": _version("torch")},
        "env": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
                "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
                "NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS"),
                "removed_for_this_run": dict(REMOVED_ENV),
                "torch_children": {k: v for k, v in child_env().items()
                                   if k.startswith(("OMP_", "GOMP_", "MALLOC_"))}},
        "malloc_tuning": _malloc.status,
    }


# --- machine limits ---------------------------------------------------------------------

def _limit_kernels():
    """The three Numba loops that measure the machine (compiled once, cached on disk)."""
    from minidl.benchmarks import _limits
    return _limits


def fma_peak_gflops(threads=None, seconds=0.2, repeats=5) -> float:
    """float32 FMA throughput: on each of `threads` Numba threads (default: all), the
    micro-kernel's MR*NV independent vector FMA chains with no loads in the loop
    (kernels/cpu/microkernel.fma_chains), the ceiling of compute-bound kernels as
    roofline tools measure it. Best of `repeats` runs of about `seconds` each."""
    import numba
    import numpy as np

    from minidl.kernels.cpu.microkernel import blocking
    k = _limit_kernels()
    threads = threads or numba.get_num_threads()
    mr, nr = blocking(np.float32)
    outs = np.full((threads, 4096), 0.5, np.float32)  # x = 0.5, y = 0.5: no overflow
    k.fma_chains_all(10, outs)
    n = 1000
    while True:  # calibrate n to last about `seconds`
        t0 = time.perf_counter()
        k.fma_chains_all(n, outs)
        dt = time.perf_counter() - t0
        if dt > seconds / 4:
            break
        n *= 4
    n = max(1, int(n * seconds / dt))
    best = measure(lambda: k.fma_chains_all(n, outs), repeats, 0.0, 60.0)["min_s"]
    return threads * n * mr * nr * 2 / best / 1e9


def warm_up_cores(threads=None, seconds=1.0) -> None:
    """Keep every thread busy for about `seconds` before timing parallel work. On a VM,
    cores left idle (or one core busy, the other idle, as in the compile measurement)
    for a while ran the next parallel work several times slower for up to a second or
    two: the MLP b256 step measured 83 steps/s right after 20 s of one-core work, 533
    a moment later, and 374-429 with this warm-up first (benchmarks/DESIGN.md,
    harness.py)."""
    fma_peak_gflops(threads, seconds=seconds / 5, repeats=5)


def gemm_gflops(n=2048, repeats=5) -> float:
    """float32 GEMM throughput of NumPy's BLAS: what a library call reaches."""
    import numpy as np
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    return 2 * n**3 / measure(lambda: a @ b, repeats, 0.0, 60.0)["median_s"] / 1e9


def bandwidth_gbs(mib=256, repeats=5) -> dict:
    """Copy and STREAM-style triad bandwidth with Numba's threads, counting bytes read
    plus written: the ceiling of memory-bound kernels (batch norm, pooling)."""
    import numpy as np
    k = _limit_kernels()
    n = mib * 2**20 // 4
    b, c, a = np.ones(n, np.float32), np.ones(n, np.float32), np.empty(n, np.float32)
    t_copy = measure(lambda: k.copy(a, b), repeats, 0.0, 60.0)["median_s"]
    t_triad = measure(lambda: k.triad(a, b, c, np.float32(2.0)), repeats, 0.0, 60.0)["median_s"]
    return {"copy": 2 * a.nbytes / t_copy / 1e9, "triad": 3 * a.nbytes / t_triad / 1e9}


def limits(quick=False) -> dict:
    """The machine's practical limits, measured in the same run as the kernels they judge."""
    import numba

    from minidl.info import threading_layer
    mib, n = (32, 512) if quick else (256, 2048)
    bw = bandwidth_gbs(mib=mib, repeats=3 if quick else 5)
    return {
        "fma_peak_gflops": fma_peak_gflops(seconds=0.05 if quick else 0.2),
        "gemm_gflops": gemm_gflops(n, repeats=3 if quick else 5),
        "copy_gbs": bw["copy"], "triad_gbs": bw["triad"],
        "gemm_n": n, "bandwidth_mib": mib,
        "blas": blas_info(), "threading_layer": threading_layer(),
        "numba_threads": numba.get_num_threads(),
    }


# --- child processes (torch) ------------------------------------------------------------

def torch_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def child_env() -> dict:
    """The environment of a torch child: the repo importable, torch's own default OpenMP
    wait policy and OpenBLAS thread timeout (minidl sets PASSIVE for Numba, which costs
    torch time per call, and OPENBLAS_THREAD_TIMEOUT=18 for itself), and the
    malloc thresholds minidl sets for itself (minidl/_malloc.py; without them glibc hands
    large freed blocks back to the OS and every call page-faults its output back in).
    The variables are glibc's equivalent of minidl's mallopt calls, read at start-up."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)  # (minidl's bounded spin, with its PASSIVE)
    env.pop("OPENBLAS_THREAD_TIMEOUT", None)  # minidl's BLAS policy, not torch's default
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    if os.environ.get("MINIDL_MALLOC_TUNING", "1") != "0":
        from minidl import _malloc
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(_malloc.MMAP_THRESHOLD))
        env.setdefault("MALLOC_TRIM_THRESHOLD_", str(_malloc.TRIM_THRESHOLD))
    return env


# torch first: its OpenMP runtime must load before the worker module imports `kernels`
# (which sets OMP_WAIT_POLICY for Numba).
_SERVE = ("import json, sys{preload}; import {module} as m\n"
          "print('{marker}null', flush=True)\n"  # ready: imports done
          "for line in sys.stdin:\n"
          "    answer = json.dumps(m.{function}(json.loads(line)))\n"
          "    print('{marker}' + answer, flush=True)\n")
_MARK = "@minidl-child@ "


class Child:
    """A torch child that stays up and answers one request at a time, so that a row's
    torch timing is taken right after minidl's (host speed can swing by 2x within a
    minute on shared machines: ratios of timings taken a minute apart would carry that
    swing). Requests and answers are JSON lines; the child idles in a blocking read
    between them. Use as a context manager.

    >>> with Child("json", "dumps", preload=()) as c:  # any module.function(request)
    ...     c.call([1, 2])
    '[1, 2]'
    """

    def __init__(self, module, function="torch_worker", preload=("torch",)):
        code = _SERVE.format(module=module, function=function, marker=_MARK,
                             preload="".join(f"; import {p}" for p in preload))
        self.what = f"{module}.{function}"
        self.stderr = tempfile.TemporaryFile("w+")  # (a pipe nobody reads could fill up)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, env=child_env(), cwd=ROOT)
        # Wait until it has imported torch (seconds of one core's time): nothing is timed
        # in this process meanwhile.
        self._answer()

    def _answer(self):
        for line in self.proc.stdout:  # (anything else the child prints is skipped)
            if line.startswith(_MARK):
                return json.loads(line[len(_MARK):])
        self.proc.kill()
        self.proc.wait()
        self.stderr.seek(0)
        raise RuntimeError(f"{self.what} in a child process failed:\n"
                           f"{self.stderr.read()[-2000:]}")

    def call(self, request):
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # (it died: _answer reports why)
        return self._answer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.proc.stdout.close()
        self.stderr.close()

