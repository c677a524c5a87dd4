"""``distst tune SWEEP.yaml [--address auto|HOST:PORT] [--resume] [--out DIR]``: a Ray Tune sweep of distst runs."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..errors import UserError
from ..stop import EXIT_REQUEUE

#: Exit code of an interrupted sweep (SIGINT/SIGUSR1): "run me again with --resume" (as the trainers' 75).
EXIT_RESUME = EXIT_REQUEUE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="run a Ray Tune sweep (tune/*.yaml): each trial a distst IMP or "
                                    "channel-pruning run",
                       description="Runs the sweep on a local Ray instance (started here) or on a running cluster "
                                   "(--address). Writes results.csv, results.md, a plot of E (e_vs_sparsity.png "
                                   "for IMP, e_vs_macs.png for channel pruning) and the trials' "
                                   "run directories (trials/<trial id>) to runs/tune/<sweep name>/ unless --out. "
                                   "SIGINT/SIGUSR1 end it cleanly (exit 75); --resume continues it.")
    p.add_argument("sweep", help="sweep file (see tune/)")
    p.add_argument("--address", default=None,
                   help="a running Ray cluster: 'auto' (this node's) or HOST:PORT; default: start a local Ray")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep in the sweep directory (finished trials are not rerun); "
                        "starts it when there is nothing to continue")
    p.add_argument("--out", default=None, help="sweep directory (default runs/tune/<sweep name>)")
    p.add_argument("--min-nodes", type=int, default=1,
                   help="with --address: wait (up to 5 min) until the cluster has this many nodes (slurm/tune.sh)")
    p.add_argument("--cpus", type=float, default=None,
                   help="CPUs of the local Ray instance (default: Slurm's allocation, else all); ignored with --address")
    p.set_defaults(func=run)


def local_cpus() -> float:
    """Slurm's CPU count when inside an allocation (Ray would see every core of the node), else all cores."""
    for name in ("SLURM_CPUS_ON_NODE", "SLURM_JOB_CPUS_PER_NODE"):
        value = os.environ.get(name, "").split("(")[0].split(",")[0]
        if value.isdigit():
            return float(value)
    return float(len(os.sched_getaffinity(0)))


def start_ray(address: str | None, cpus: float | None, min_nodes: int = 1, reaper_log: Path | None = None) -> None:
    import ray

    if address:
        ray.init(address=address, log_to_driver=True)
        wait_for_nodes(min_nodes)
    else:
        from ..sweep import reaper

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private instance of this process
        reaper.start(log=reaper_log)  # a driver killed outright leaves none of its Ray processes behind
        ray.init(num_cpus=cpus or local_cpus(), include_dashboard=False, log_to_driver=True)


def wait_for_nodes(count: int, timeout_s: float = 300) -> None:
    """Block until ``count`` Ray nodes are alive (the batch script starts them in parallel)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while (alive := sum(node["Alive"] for node in ray.nodes())) < count:
        if time.monotonic() > deadline:
            raise UserError(f"only {alive} of {count} Ray nodes joined within {timeout_s:.0f} s")
        time.sleep(1)
    resources = ray.cluster_resources()
    print(f"Ray: {alive} node(s), {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")


def run(args: argparse.Namespace) -> int:
    from ..sweep import load_sweep
    from ..sweep.results import write_results
    from ..sweep.runner import can_resume, run_sweep

    spec = load_sweep(args.sweep)
    sweep_dir = Path(args.out) if args.out else Path("runs") / "tune" / spec.sweep_name
    resume = args.resume and can_resume(sweep_dir)
    if args.resume and not resume:
        print(f"distst tune: nothing to resume in {sweep_dir}; starting the sweep", file=sys.stderr)
    if not args.resume and (sweep_dir / "tune").exists():
        raise UserError(f"{sweep_dir} already holds this sweep: pass --resume to continue it, or --out DIR for a new one")

    import ray

    sweep_dir.mkdir(parents=True, exist_ok=True)
    start_ray(args.address, args.cpus, args.min_nodes, reaper_log=sweep_dir / "reaper.log")
    try:
        outcome = run_sweep(spec, sweep_dir, resume=resume)
        written = write_results(spec, outcome.results, sweep_dir)
    finally:
        ray.shutdown()
    print_summary(written, sweep_dir)
    if outcome.interrupted:
        print(f"sweep interrupted: continue it with `distst tune {args.sweep} --resume"
              f"{' --out ' + str(args.out) if args.out else ''}`")
        return EXIT_RESUME
    return 1 if any(row["status"] == "error" for row in written["rows"]) else 0


def print_summary(written: dict, sweep_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..sweep.results import _cell

    rows = written["rows"]
    table = Table(title=f"sweep results (best first): {sweep_dir}")
    columns = [c for c in (rows[0] if rows else {}) if c != "run_dir"]
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(row[c]) for c in columns))
    Console().print(table)
    print(f"results: {written['csv']}, {written['markdown']}")
    if written["plot"]:
        print(f"plot: {written['plot']}")
    if written["wandb"]:
        print(written["wandb"])
