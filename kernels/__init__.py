"""minidl's kernels: NumPy references (`kernels.reference`) and parallel Numba kernels
(`kernels.cpu`) with the same function names and signatures. See kernels/README.md."""
