"""``distst``: one command, thin sub-commands that parse arguments and call the library.

Start-up order matters: the stop-signal handler goes in first (Slurm's pre-time-limit SIGUSR1 or a
SIGTERM can arrive while a task is still importing torch), and building the parser imports nothing heavy,
so ``distst --help`` is instant. Sub-command modules import torch, webdataset, DeepSpeed and the pydantic
config inside their ``run`` functions only.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Sequence

from . import stop
from .errors import DiststError, UserError

__all__ = ["DiststError", "UserError", "build_parser", "is_user_error", "main", "parse"]

# Each module defines ``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.
COMMANDS = (
    "distst.commands.stylize",
    "distst.commands.models",
    "distst.commands.convert",
    "distst.commands.shards",
    "distst.commands.bench",
    "distst.commands.train",
    "distst.commands.imp",
    "distst.commands.prune",
    "distst.commands.slim",
    "distst.commands.report",
    "distst.commands.check",
    "distst.commands.tune",
    "distst.commands.study",
    "distst.commands.export",
    "distst.commands.evaluate",
)

# A command whose work polls ``stop.PROCESS`` (checkpoint, exit 75) says so where it is defined:
# ``parser.set_defaults(stoppable=True)``. Every other command gets the default signal behaviour back after
# parsing, so that SIGTERM still ends a `distst stylize` at once.

DEBUG_ENV = "DISTST_DEBUG"  # DISTST_DEBUG=1: print the traceback of user errors too


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distst", description="Compress style-transfer networks: lottery tickets, channel pruning, int8."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; dotted overrides placed after options (``job.yaml --nproc 2 train.lr=1``) still count."""
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and all(_is_override(a) for a in extra):
        args.overrides = [*args.overrides, *extra]  # in command-line order: a later override still wins
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` means "bad input" (one line and its exit code) rather than a bug (traceback)."""
    return isinstance(err, (DiststError, FileNotFoundError))


def exit_code(err: BaseException) -> int:
    """The exit code of a user error: its class's ``exit_code`` (2 for bad input and a missing file)."""
    return err.exit_code if isinstance(err, DiststError) else 2


def _give_back_signals(previous: dict) -> None:
    """Default signal behaviour for commands that never poll stop requests; a signal already caught is re-sent."""
    stop.restore(previous)
    if stop.PROCESS.reason in signal.Signals.__members__:
        signal.raise_signal(signal.Signals[stop.PROCESS.reason])


def main(argv: Sequence[str] | None = None) -> int:
    previous = stop.install_signal_handlers()  # first thing: see the module docstring
    args = parse(build_parser(), argv)
    if not getattr(args, "stoppable", False):
        _give_back_signals(previous)
    try:
        return int(args.func(args) or 0)
    except Exception as err:
        if not is_user_error(err):
            raise
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        message = str(err) or type(err).__name__
        print(f"distst {args.command}: error: {message}", file=sys.stderr)
        return exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
