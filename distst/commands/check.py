"""``distst check JOB.yaml [key=value ...]``: validate a job and its files without starting it."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate a job config and that its shards and weight files exist")
    p.add_argument("job")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import UserError
    from ..config import load_config
    from ..preflight import problems

    cfg = load_config(args.job, args.overrides)
    found = problems(cfg)
    if found:
        raise UserError(f"{args.job} cannot start:\n  " + "\n  ".join(found))
    print(f"{args.job}: ok ({cfg.model.name}, run directory {cfg.run_dir()})")
    return 0
