"""minidl's benchmarks. Speed is measured here, never in the test suite."""
# minidl's thread policies (kernels/__init__.py: OpenBLAS workers that sleep at once,
# Numba's OpenMP workers that do not spin) must be in the environment before NumPy loads
# OpenBLAS, as they are when minidl is imported first.
import kernels  # noqa: F401,E402
