"""``distst models``: every registered model with parameters and MACs per group."""

from __future__ import annotations

import argparse
import json

SIZES = (256, 512)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list models with parameter counts and MACs per group")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0 = reference)")
    p.set_defaults(func=run)


def describe(width: float = 1.0) -> list[dict]:
    from ..config import ModelConfig
    from ..models import available, build, param_counts
    from ..models.complexity import macs

    rows = []
    for name in available():
        model = build(ModelConfig(name=name, width=width))
        rows.append({"model": name, "width": width, "input_multiple": model.input_multiple,
                     "params": param_counts(model), **{f"macs_{s}": macs(model, s) for s in SIZES}})
    return rows


def run(args: argparse.Namespace) -> int:
    rows = describe(args.width)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"distst models (width {args.width}; MACs = multiply-adds, FLOPs/2, per stylisation)")
    for col in ("model", "group", "params", *(f"GMACs @{s}" for s in SIZES)):
        table.add_column(col, justify="left" if col in ("model", "group") else "right")
    for row in rows:
        for group in ("encoder", "transform", "decoder", "total"):
            table.add_row(row["model"] if group == "encoder" else "", group, f"{row['params'][group]:,}",
                          *(f"{row[f'macs_{s}'][group] / 1e9:.2f}" for s in SIZES),
                          end_section=group == "total")
    Console().print(table)
    return 0
