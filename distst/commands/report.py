"""``distst report RUN_DIR``: Markdown + PNG report of an IMP run or a channel-pruning run."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write RUN_DIR/report/report.md with plots and an image grid")
    p.add_argument("run_dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not Path(args.run_dir).is_dir():
        raise UserError(f"run directory {args.run_dir} does not exist")
    if (Path(args.run_dir) / "summary.json").is_file() and list(Path(args.run_dir).glob("[0-9][0-9]_*/stage.json")):
        return _channel_report(Path(args.run_dir))
    from ..report import ReportError, load_run, markdown_table, write_report

    try:
        path = write_report(args.run_dir)
    except ReportError as err:
        raise UserError(str(err)) from None
    summary, levels = load_run(Path(args.run_dir))
    print(markdown_table(summary, levels))
    print(f"\nreport: {path}")
    return 0


def _channel_report(run_dir: Path) -> int:
    import json

    from ..prune.channels.report import markdown_table, write_report

    path = write_report(run_dir)
    print(markdown_table(json.loads((run_dir / "summary.json").read_text())))
    print(f"\nreport: {path}")
    return 0
