"""The `minidl` command: one subcommand per job, each in the module that does it."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from .experiments import ablation, figure1, train
    parser = argparse.ArgumentParser(prog="minidl", description="minidl: a Numba-accelerated "
                                     "deep-learning mini-framework")
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        from .info import main as info_main
        return info_main(args)
    if args.command == "figure1":
        from .experiments import figure1
        result = figure1.run(args)
    elif args.command == "ablation":
        from .experiments import ablation
        result = ablation.run(args)
    elif args.command == "train":
        from .experiments import train
        result = train.run(args)
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
