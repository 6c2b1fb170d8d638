"""minidl's kernels: NumPy references (`kernels.reference`) and parallel Numba kernels
(`kernels.cpu`) with the same function names and signatures. See kernels/README.md."""
import os

# Numba's OpenMP workers spin after each parallel region by default; on few cores the
# spinning threads fight BLAS's threads at every Numba <-> BLAS hand-over (measured 3-7x
# slower convolutions). PASSIVE makes them sleep. The variable is read when the OpenMP
# runtime loads, so it must be set before the first parallel kernel runs (and before
# `import torch`, which brings its own runtime). A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
