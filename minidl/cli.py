"""The `minidl` command: one subcommand per job, each in the module that does it."""
from __future__ import annotations

import argparse
import os
import sys

from .errors import debug_requested, one_line


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a mistake reported as one line (the usage is in --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .experiments import ablation, figure1, train
    parser = ArgumentParser(prog="minidl", description="minidl: a Numba-accelerated "
                            "deep-learning mini-framework; a mistake is reported as one "
                            "line (exit status 2 for bad arguments, 1 otherwise)")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (may appear anywhere on "
                             "the line; or set MINIDL_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, threads, BLAS and CUDA availability; with "
                       "--model, what a model costs")
    from .info import add_arguments as info_arguments
    info_arguments(p)
    p = sub.add_parser("figure1", help="reproduce Figure 1 of the Batch Normalization paper",
                       description=figure1.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    figure1.add_arguments(p)
    p = sub.add_parser("ablation", help="the paper's Inception experiment: BN-Inception-lite "
                       "in its variants (no BN, BN-Baseline, BN-x5, BN-x30, BN-x5-Sigmoid, ...)",
                       description=ablation.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ablation.add_arguments(p)
    p = sub.add_parser("train", help="train one network of the MNIST experiment")
    train.add_train_arguments(p)
    from . import profiler
    p = sub.add_parser("profile", help="one training step of a model, broken down per op "
                       "and pass", description=profiler.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    profiler.add_arguments(p)
    from . import bench
    p = sub.add_parser("bench", help="benchmark kernels and training steps against NumPy and "
                       "PyTorch", description=bench.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(p)
    return parser


# Errors a user meets without a bug in minidl: reported without "unexpected".
_USER_ERRORS = (OSError, ValueError, FloatingPointError, MemoryError)


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, MemoryError):
        return f"out of memory{f' ({e})' if str(e) else ''}"
    text = str(e) or type(e).__name__
    if not isinstance(e, _USER_ERRORS):
        text = f"unexpected {type(e).__name__}: {text} (rerun with --debug for the traceback)"
    return text


def _report(command: str, message: str) -> None:
    message = one_line(message)
    if message.startswith(command + ":"):
        message = message[len(command) + 1:].strip()
    print(f"{command}: error: {message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    """Run one `minidl` command; returns the exit status. Every error is one line on
    stderr (status 2 for bad arguments, 1 otherwise, 130 for Ctrl-C); --debug or
    MINIDL_DEBUG=1 lets the exception through with its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)  # a mistake: one line, SystemExit(2)
    command = f"minidl {args.command}"
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        if debug:
            raise
        _report(command, "interrupted")
        return 130
    except SystemExit as e:  # UsageError, RunError, RunDirError: a message for the user
        if not isinstance(e.code, str):
            raise
        if debug:
            import traceback
            traceback.print_exc()
        _report(command, e.code)
        return getattr(e, "exit_status", 1)
    except Exception as e:
        if debug:
            raise
        _report(command, _describe(e))
        return 1


def _check_output_files(args) -> None:
    """--json / --markdown files must be writable before a long run starts."""
    from .errors import UsageError
    for flag in ("json", "markdown"):
        path = getattr(args, flag, None)
        if not path:
            continue
        parent = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise UsageError(f"--{flag} {path}: is a directory, not a file")
        if not os.path.isdir(parent):
            raise UsageError(f"--{flag} {path}: the folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise UsageError(f"--{flag} {path}: the folder {parent} is not writable")


def _dispatch(args) -> int:
    _check_output_files(args)
    if args.command == "info":
        from .info import main as info_main
        return info_main(args)
    if args.command in ("figure1", "ablation", "train"):
        # Alone, or as one rank of `mpirun -n K minidl ...` (minidl/distributed/launch.py).
        import importlib

        from .distributed.launch import run_command
        module = importlib.import_module(f".experiments.{args.command}", __package__)
        result = run_command(args.command, module.run, args)
        if result.get("failed"):
            return 1
    elif args.command == "profile":
        from .profiler import main as profile_main
        return profile_main(args)
    elif args.command == "bench":
        from .bench import run as bench_run
        return bench_run(args)
    else:
        return 2
    return 130 if result.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
