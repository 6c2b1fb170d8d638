"""The paper's experiments, runnable from the `minidl` command."""
