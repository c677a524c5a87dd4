"""Arguments of the training commands, and ``--nproc N``: a thin convenience that re-runs the same command
under torchrun (the standard launcher)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def add_job_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """A job YAML, dotted overrides and ``--nproc``: what every training command takes."""
    parser.add_argument("job", help="job YAML (see jobs/)")
    parser.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {example}")
    parser.add_argument("--nproc", type=int, default=1,
                        help="processes on this machine (runs under torchrun); under torchrun/srun leave at 1")


def relaunch_if_requested(args: argparse.Namespace, command: str) -> int | None:
    """Exit code of ``torchrun --nproc_per_node N -m distst COMMAND ...``, or None to run in this process."""
    if args.nproc <= 1 or "RANK" in os.environ:
        return None
    from ..train.engine import free_port

    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}",
            f"--master_port={free_port()}", "-m", "distst", command, args.job, *args.overrides]
    return subprocess.call(argv)
