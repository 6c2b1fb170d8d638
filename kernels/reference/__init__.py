"""Plain NumPy kernels: readable oracles for the tests and the "numpy" backend. See kernels/README.md."""
