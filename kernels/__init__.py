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
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")
