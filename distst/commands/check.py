"""``distst check JOB.yaml [key=value ...]``: validate a job and its files without starting it."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate a job config and that its shards and weight files exist"
                       ", the same preflight train and imp run")
    p.add_argument("job")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..preflight import require

    cfg = load_config(args.job, args.overrides)
    require(cfg, args.job)  # the same preflight `distst train` and `distst imp` run before starting
    print(f"{args.job}: ok ({cfg.model.name}, run directory {cfg.run_dir()})")
    return 0
