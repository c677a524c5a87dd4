"""``distst prune JOB.yaml [key=value ...]``: channel pruning (l2, iccp, cpst) end to end, ending in a slimmed model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .launch import add_job_arguments, run_job, run_schedule, schedule_check


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="channel pruning (prune.method=l2|iccp|cpst) to a physically slimmed model",
                       description="Runs the method's stages (dense training, regularised training, pruning steps, "
                                   "fine-tuning) in the run directory and writes slim/model.pt, summary.json and "
                                   "report/report.md; re-running resumes at the stage and step where it stopped. "
                                   "Exits 75 after a SIGTERM/SIGUSR1 checkpoint.")
    add_job_arguments(p, "prune.method=iccp prune.ratios=[0.3,0.857]")
    p.set_defaults(func=run, stoppable=True)  # its job polls stop requests (see distst.cli)


def run(args: argparse.Namespace) -> int:
    return run_job(args, "prune", run_schedule, check=schedule_check("prune"), report=_report)


def _report(result: Any, run_dir: Path) -> None:
    s = result.summary
    print(f"{s['method']} finished: {run_dir}\n"
          f"  channels removed {s['channels_removed_in_scope']:.1%} of the pruned layers', parameters removed {s['params_removed']:.1%}, "
          f"{s['macs_speedup']:.2f}x fewer MACs\n"
          f"  E dense {s['dense']['errors']['total_error']:.4g} -> slimmed "
          f"{s['final']['errors'].get('total_error', float('nan')):.4g}\n"
          f"  slimmed model: {run_dir / s['slim_model']}\n  report: {run_dir / 'report' / 'report.md'}")
