"""minidl's kernels: NumPy references (`minidl.kernels.reference`) and parallel Numba kernels
(`minidl.kernels.cpu`) with the same function names and signatures. See kernels/README.md."""
import os
import sys

# Numba's OpenMP workers spin after each parallel region by default; on few cores the
# spinning threads fight BLAS's threads at every Numba <-> BLAS hand-over, which slows
# convolutions several-fold (numbers: benchmarks/DESIGN.md, kernels/__init__.py).
# PASSIVE makes them sleep. The variable is read when the OpenMP runtime loads, so it
# must be set before the first parallel kernel runs (and before `import torch`, which
# brings its own runtime). A user's own setting wins.
# torch imported first is the one case minidl cannot mend: torch loads its libgomp with
# its symbols global, so Numba's OpenMP pool runs on that runtime, which read its wait
# policy (spin) before this line, and no call changes it later. Its spinning workers
# halved the MLP b256 step (numbers: benchmarks/DESIGN.md, kernels/__init__.py), so say
# so once, with the fix.
OMP_WAIT_POLICY_LATE = "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ
# PASSIVE alone sends the workers to sleep at once, and every parallel region then wakes
# them (~50 us a region on a VM; a CNN step runs dozens back to back). A bounded spin
# first, GOMP_SPINCOUNT iterations (GNU libgomp: ~10^5 a millisecond, so ~0.1 ms), keeps
# them awake between back-to-back kernels and asleep during longer gaps: +20% CNN and
# +7% BN-Inception-lite steps on 2 cores. The MLP steps run no parallel Numba kernel
# next to their BLAS calls (see kernels/cpu/elementwise.py, _EXP_COST), so no spinning
# worker competes with BLAS's (numbers: benchmarks/DESIGN.md, kernels/__init__.py).
# Only with minidl's own policy: a user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if OMP_WAIT_POLICY_LATE:
    import warnings
    warnings.warn("minidl: torch was imported before minidl, so the OpenMP runtime that "
                  "minidl's kernels share with it keeps spinning idle threads "
                  "(OMP_WAIT_POLICY came too late), which can slow training up to 2x on "
                  "few cores: import minidl before torch, or set OMP_WAIT_POLICY=PASSIVE "
                  "GOMP_SPINCOUNT=10000 in the environment", RuntimeWarning, stacklevel=2)

# One policy for BLAS threads and Numba threads: OpenBLAS's workers spin for 2^28 cycles
# (~0.1 s) after every multithreaded call before they sleep, and while they spin every
# parallel Numba kernel on the same cores runs slower (a training step that calls BLAS
# once, in a Linear layer or a 1x1 convolution, pays this for all of its kernels).
# 2^18 cycles (~70 us) lets them sleep before the Numba kernels that follow a BLAS call
# run, yet keeps them awake between back-to-back BLAS calls (an MLP step); a shorter
# timeout makes every BLAS call pay a thread wake-up, a longer one taxes the kernels
# (numbers: benchmarks/DESIGN.md, kernels/__init__.py). OpenBLAS reads the variable when
# it loads, i.e. when NumPy is first imported: `import minidl` before NumPy, or set it
# yourself. A user's own setting wins.
BLAS_THREAD_TIMEOUT_APPLIED = ("OPENBLAS_THREAD_TIMEOUT" in os.environ
                               or "numpy" not in sys.modules)
BLAS_THREAD_TIMEOUT_LATE = False  # applied after NumPy had loaded OpenBLAS (see below)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")


def _openblas_libraries():
    """Paths of the OpenBLAS libraries loaded in this process (Linux: /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps}  # the mapped file, last field
    except OSError:
        return []
    return sorted(p for p in paths
                  if "openblas" in os.path.basename(p).lower() and ".so" in p)


def _apply_thread_timeout_late() -> bool:
    """NumPy (or torch, which imports it) came first, so OpenBLAS read its environment
    before the line above. Most scripts start with `import numpy`, and with torch loaded
    too the spinning workers cost the most: BN-Inception-lite's step ran 3-4x slower
    (numbers: benchmarks/DESIGN.md, kernels/__init__.py). OpenBLAS exports what it runs at
    load time: re-read the environment (`openblas_read_env`), then stop its worker threads
    (`blas_thread_shutdown_`, what its own fork handler calls); the next BLAS call starts
    them again with the new timeout, on the same number of threads. Where a library lacks
    these symbols nothing changes and `minidl info` says so."""
    import ctypes
    done = False
    for path in _openblas_libraries():
        try:
            lib = ctypes.CDLL(path)
            read_env, shutdown = lib.openblas_read_env, lib.blas_thread_shutdown_
            timeout = lib.openblas_thread_timeout
        except (OSError, AttributeError):
            continue
        timeout.restype = ctypes.c_int
        read_env()
        if timeout() != int(os.environ["OPENBLAS_THREAD_TIMEOUT"]):
            continue
        shutdown()
        done = True
    return done


if not BLAS_THREAD_TIMEOUT_APPLIED:
    BLAS_THREAD_TIMEOUT_APPLIED = BLAS_THREAD_TIMEOUT_LATE = _apply_thread_timeout_late()
