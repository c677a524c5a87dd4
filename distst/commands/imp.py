"""``distst imp JOB.yaml [key=value ...]``: lottery tickets by iterative magnitude pruning, all levels."""

from __future__ import annotations

import argparse

from .launch import add_job_arguments, relaunch_if_requested


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("imp", help="find lottery tickets: iterative magnitude pruning with rewinding",
                       description="Runs level 0 (dense) and prune.rounds pruned levels in the run directory; "
                                   "re-running resumes at the level and step where it stopped. Writes "
                                   "summary.json and report/report.md. Exits 75 after a SIGTERM/SIGUSR1 checkpoint.")
    add_job_arguments(p, "prune.rounds=5 prune.rate=0.2")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import stop

    stop.install_signal_handlers()  # before the slow imports: a batch script's USR1 must never kill a starting task
    from ..config import load_config
    from ..prune import run_imp
    from ..train import EXIT_REQUEUE

    args.overrides = ["prune.method=imp", *args.overrides]  # a later prune.method=... still wins, and is refused
    from ..preflight import require

    cfg = load_config(args.job, args.overrides)
    require(cfg, args.job)  # the preflight of `distst check`: nothing is written or started if it fails
    relaunched = relaunch_if_requested(args, "imp")
    if relaunched is not None:
        return relaunched
    from .. import rundir
    from ..train.engine import prepare_process_env, setup_distributed

    prepare_process_env()
    setup_distributed()  # ranks share the lock: rank 0 takes it and tells the others
    run_dir = cfg.run_dir()
    with rundir.exclusive(run_dir):  # once for every level: each level's train() runs inside it
        result = run_imp(cfg, run_dir)
    if result.stopped:
        return EXIT_REQUEUE
    import torch.distributed as dist

    if dist.get_rank() == 0:
        extreme = result.summary["extreme_sparsity"]
        print(f"IMP finished: {run_dir}\n  extreme sparsity: "
              f"{f'{extreme:.2%}' if extreme else 'no matching subnetwork'}\n  report: {run_dir / 'report' / 'report.md'}")
    return 0
