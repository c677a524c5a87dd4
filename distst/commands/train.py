"""``distst train JOB.yaml [key=value ...]``: train a model (one process, or N with --nproc)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, UserError
from .launch import add_job_arguments, run_job

if TYPE_CHECKING:
    from ..config import Config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a job config (resumes its run directory)",
                       description="Re-running the same command resumes from the run directory's last checkpoint. "
                                   "SIGTERM/SIGUSR1 checkpoint at the next step and exit with code 75.")
    add_job_arguments(p, "train.lr=3e-4 model.width=0.25")
    p.set_defaults(func=run, stoppable=True)  # its job polls stop requests (see distst.cli)


def run(args: argparse.Namespace) -> int:
    return run_job(args, "train", lambda cfg, run_dir: _train(cfg, run_dir, args.job), check=_check)


def _check(cfg: Config) -> None:
    if cfg.distill.enabled and not cfg.distill.teacher:
        raise ConfigError("distill.weight / distill.features: distst train runs one training, with no dense step "
                          "of its own to learn from: name the teacher's model file with distill.teacher")


def _train(cfg: Config, run_dir: Path, job: str) -> Any:
    from ..distill import with_distillation
    from ..registry import method_record
    from ..stability import with_temporal_losses
    from ..train import train

    record = method_record(cfg.prune.method)
    if record.factory is None:
        raise UserError(f"prune.method={cfg.prune.method} runs through its own command: "
                        f"distst {record.command} {job} ...")
    return train(cfg, run_dir, with_distillation(with_temporal_losses(record.factory(cfg), cfg), cfg, teacher=None))
