"""``distst models``: every registered model (or given model files) with parameters and MACs per group."""

from __future__ import annotations

import argparse
import json

from ..errors import UserError

SIZES = (256, 512)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list models with parameter counts and MACs per group")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0 = reference)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="MODEL_FILE",
                   help="describe a distst model file (any channel plan, e.g. a slimmed model); repeatable")
    p.set_defaults(func=run)


def _row(label: str, model: object) -> dict:
    from ..models import param_counts
    from ..models.complexity import macs

    return {"model": label, "width": model.cfg.width, "plan": model.plan,  # type: ignore[attr-defined]
            "input_multiple": model.input_multiple,  # type: ignore[attr-defined]
            "params": param_counts(model), **{f"macs_{s}": macs(model, s) for s in SIZES}}  # type: ignore[arg-type]


def describe(width: float = 1.0, checkpoints: list[str] | None = None) -> list[dict]:
    from ..config import model_section
    from ..models import available, create
    from ..models.io import load_model

    if checkpoints:
        return [_row(path, load_model(path)[0]) for path in checkpoints]
    return [_row(name, create(model_section(name=name, width=width))) for name in available()]


def run(args: argparse.Namespace) -> int:
    if args.width <= 0:
        raise UserError(f"--width must be positive, got {args.width}")
    rows = describe(args.width, args.checkpoint)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    shown = "given model files" if args.checkpoint else f"width {args.width}"
    table = Table(title=f"distst models ({shown}; MACs = multiply-adds, FLOPs/2, per stylisation)")
    for col in ("model", "group", "params", *(f"GMACs @{s}" for s in SIZES)):
        table.add_column(col, justify="left" if col in ("model", "group") else "right")
    for row in rows:
        groups = [g for g in row["params"] if g != "total"] + ["total"]
        for group in groups:
            table.add_row(row["model"] if group == groups[0] else "", group, f"{row['params'][group]:,}",
                          *(f"{row[f'macs_{s}'][group] / 1e9:.2f}" for s in SIZES),
                          end_section=group == "total")
    Console().print(table)
    return 0
