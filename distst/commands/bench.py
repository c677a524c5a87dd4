"""``distst bench TARGET`` / ``distst bench all``: benchmarks that print rich tables.

To add a target, add a module to ``distst/bench/`` and one line to ``BENCHES`` (its name and the module).
The module defines ``HELP`` (one line), ``add_arguments(parser)`` (every option needs a default, so that
``bench all`` can run it) and ``run(args) -> int``. Keep those modules' top-level imports light: they are imported to build the CLI.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

BENCHES: dict[str, str] = {
    "data": "distst.bench.data",
    "tune": "distst.bench.tune",
    "faults": "distst.bench.faults",
    "latency": "distst.bench.latency",
    "table": "distst.bench.table",
    "train": "distst.bench.train",
}


def _target(name: str) -> ModuleType:
    return importlib.import_module(BENCHES[name])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHES) + ", or all")
    targets = p.add_subparsers(dest="target", required=True, metavar="TARGET")
    for name in BENCHES:
        module = _target(name)
        parser = targets.add_parser(name, help=module.HELP)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)
    every = targets.add_parser("all", help="every benchmark with its default options")
    every.set_defaults(func=run_all)


def run_all(args: argparse.Namespace) -> int:
    """Each target with its defaults; the exit status is the worst of theirs."""
    worst = 0
    for name in BENCHES:
        module = _target(name)
        parser = argparse.ArgumentParser(prog=f"distst bench {name}")
        module.add_arguments(parser)
        print(f"== distst bench {name}")
        worst = max(worst, int(module.run(parser.parse_args([])) or 0))
    return worst
