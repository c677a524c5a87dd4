"""``distst slim RUN_DIR``: the physically slimmed model of a channel-pruning run, as one model file."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("slim", help="write RUN_DIR/slim/model.pt: the smaller dense model of a channel-pruning run",
                       description="Builds the slimmed model from the run's last finished stage (its chosen "
                                   "channels applied to its parent, scales folded) and writes it with its channel "
                                   "plan and summary.json; `distst prune` runs this at its end.")
    p.add_argument("run_dir", type=Path, help="a `distst prune` run directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.run_dir.is_dir():
        raise FileNotFoundError(f"run directory {args.run_dir} does not exist")
    from ..models import param_counts
    from ..models.io import load_model
    from ..prune.channels import write_slim

    path = write_slim(args.run_dir)
    model, _ = load_model(path)
    print(f"slimmed model: {path} ({param_counts(model)['total']:,} parameters)")
    return 0
