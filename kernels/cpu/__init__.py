"""Parallel Numba kernels: the "numba" backend. See kernels/README.md."""
