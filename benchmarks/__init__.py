"""minidl's benchmarks. Speed is measured here, never in the test suite."""
