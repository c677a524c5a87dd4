"""``distst check JOB.yaml [key=value ...]``: validate a job and its files without starting it."""

from __future__ import annotations

import argparse

from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate a job config and that its shards and weight files exist"
                       ", the same preflight train and imp run")
    p.add_argument("job", help="a job file, or a study file (every run of the study is checked)")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--nproc", type=int, default=None,
                   help="processes the job will be launched with (as train's --nproc; inside a torchrun or srun "
                        "launch, its world size; in a Slurm batch script, default: the job's SLURM_NTASKS, which "
                        "its srun runs; else 1): a run directory's checkpoints must have been written by as many")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from ..config import load_config
    from ..preflight import launch_world_size, require
    from ..study.spec import is_study_file, load_study

    # A batch script checks before its `srun` of all the job's tasks: those are the processes that will resume.
    nproc = args.nproc if args.nproc is not None else int(os.environ.get("SLURM_NTASKS", "1"))
    world_size = launch_world_size(nproc)
    if is_study_file(args.job):
        if args.overrides:
            raise UserError(f"{args.job} is a study file: put overrides in its `overrides` key")
        study = load_study(args.job)
        for run_ in study.runs:
            require(run_.cfg, f"{args.job} ({run_.name})", world_size=world_size)
        print(f"{args.job}: ok (study {study.name}: {', '.join(r.name for r in study.runs)})")
        return 0
    cfg = load_config(args.job, args.overrides)
    require(cfg, args.job, world_size=world_size)  # the same preflight `distst train` and `distst imp` run before starting
    print(f"{args.job}: ok ({cfg.model.name}, run directory {cfg.run_dir()})")
    return 0
