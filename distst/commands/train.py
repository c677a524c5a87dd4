"""``distst train JOB.yaml [key=value ...]``: train a model (one process, or N with --nproc)."""

from __future__ import annotations

import argparse

from .launch import add_job_arguments, relaunch_if_requested


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a job config (resumes its run directory)",
                       description="Re-running the same command resumes from the run directory's last checkpoint. "
                                   "SIGTERM/SIGUSR1 checkpoint at the next step and exit with code 75.")
    add_job_arguments(p, "train.lr=3e-4 model.width=0.25")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import stop

    stop.install_signal_handlers()  # before the slow imports: a batch script's USR1 must never kill a starting task
    from ..config import load_config
    from ..preflight import require
    from ..train import EXIT_REQUEUE, train

    cfg = load_config(args.job, args.overrides)  # validate before launching N processes
    require(cfg, args.job)  # the preflight of `distst check`: nothing is written or started if it fails
    relaunched = relaunch_if_requested(args, "train")
    if relaunched is not None:
        return relaunched
    from ..train.engine import prepare_process_env

    prepare_process_env()
    from ..registry import method_factory

    factory = method_factory(cfg.prune.method)
    if cfg.prune.method != "none" and factory is None:
        from ..cli import UserError

        raise UserError(f"prune.method={cfg.prune.method} runs through its own command: "
                        f"distst {type(cfg.prune).command} {args.job} ...")
    result = train(cfg, cfg.run_dir(), factory(cfg) if factory else None)
    return EXIT_REQUEUE if result.stopped else 0
