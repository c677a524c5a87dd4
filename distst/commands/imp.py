"""``distst imp JOB.yaml [key=value ...]``: lottery tickets by iterative magnitude pruning, all levels."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .launch import add_job_arguments, run_job, run_schedule, schedule_check


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("imp", help="find lottery tickets: iterative magnitude pruning with rewinding",
                       description="Runs level 0 (dense) and prune.rounds pruned levels in the run directory; "
                                   "re-running resumes at the level and step where it stopped. Writes "
                                   "summary.json and report/report.md. Exits 75 after a SIGTERM/SIGUSR1 checkpoint.")
    add_job_arguments(p, "prune.rounds=5 prune.rate=0.2")
    p.set_defaults(func=run, stoppable=True)  # its job polls stop requests (see distst.cli)


def run(args: argparse.Namespace) -> int:
    if _job_method(args.job) in (None, "none"):  # a job naming its method keeps it (prune.method=transfer)
        args.overrides = ["prune.method=imp", *args.overrides]  # a later prune.method=... still wins, and is refused
    return run_job(args, "imp", run_schedule, check=schedule_check("imp"), report=_report)


def _job_method(job: str) -> Any:
    """The job file's ``prune.method`` (None when it names none or cannot be read: load_config then says why)."""
    import yaml

    try:
        tree = yaml.safe_load(Path(job).read_text())
    except (OSError, yaml.YAMLError):
        return None
    prune = tree.get("prune") if isinstance(tree, dict) else None
    return prune.get("method") if isinstance(prune, dict) else None


def _report(result: Any, run_dir: Path) -> None:
    if result.summary.get("kind") != "imp":  # another lottery-ticket method: its report's own lines
        from ..reports import REPORTS

        print(REPORTS[result.summary["kind"]].finished(run_dir, result.summary))
        return
    extreme = result.summary["extreme_sparsity"]
    print(f"IMP finished: {run_dir}\n  extreme sparsity: "
          f"{f'{extreme:.2%}' if extreme else 'no matching subnetwork'}\n  report: {run_dir / 'report' / 'report.md'}")
