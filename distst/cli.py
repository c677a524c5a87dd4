"""``distst``: one command, thin sub-commands that parse arguments and call the library."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module defines ``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.
COMMANDS = (
    "distst.commands.stylize",
    "distst.commands.models",
    "distst.commands.convert",
    "distst.commands.shards",
    "distst.commands.bench",
    "distst.commands.train",
    "distst.commands.imp",
    "distst.commands.report",
    "distst.commands.check",
)


class UserError(Exception):
    """Raised by commands for bad input: printed as one line, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distst", description="Compress style-transfer networks: lottery tickets, channel pruning, int8."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .config import ConfigError
    from .models.weights import WeightsError

    try:
        return int(args.func(args) or 0)
    except (UserError, ConfigError, WeightsError, FileNotFoundError) as err:
        print(f"distst {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
