"""``distst report RUN_DIR``: Markdown + PNG report of any multi-step run (its summary's ``kind``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write RUN_DIR/report/report.md with plots and an image grid")
    p.add_argument("run_dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {args.run_dir} does not exist")
    from ..reports import report_for, write_report

    path = write_report(run_dir)  # a ReportError is a user error: one line
    report, summary = report_for(run_dir)
    print(report.table(run_dir, summary))
    print(f"\nreport: {path}")
    return 0
