"""The `minidl` command: one subcommand per job, each in the module that does it."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minidl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, threads, BLAS and CUDA availability")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        from .info import main as info_main
        return info_main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
