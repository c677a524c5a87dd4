"""Arguments of the training commands and their common start and end (``run_job``), and the entry point
torchrun runs in each worker (``worker_main``; the launcher itself is ``distst.launcher``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import stop
from ..launcher import DEFAULT_MAX_RESTARTS, STATUS_DIR_ENV, WorkerStatus, relaunch_if_requested
from ..stop import EXIT_REQUEUE

if TYPE_CHECKING:
    from ..config import Config


def add_job_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """A job YAML, dotted overrides and ``--nproc``: what every training command takes."""
    parser.add_argument("job", help="job YAML (see jobs/)")
    parser.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {example}")
    parser.add_argument("--nproc", type=int, default=1,
                        help="processes on this machine (runs under torchrun); under torchrun/srun leave at 1")
    parser.add_argument("--max-restarts", type=_whole_number, default=DEFAULT_MAX_RESTARTS, metavar="N",
                        help="with --nproc: restart the processes in place from the last checkpoint when one dies "
                             f"(killed, out of memory), at most N times (default {DEFAULT_MAX_RESTARTS})")


def _whole_number(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (got {value})")
    return value


def run_job(args: argparse.Namespace, command: str, work: Callable[[Config, Path], Any], *,
            check: Callable[[Config], None] | None = None,
            report: Callable[[Any, Path], None] | None = None) -> int:
    """The common start and end of ``distst train|imp|prune``: stop-signal handlers, the config and its
    preflight (``check`` first, then ``distst check``'s), ``--nproc`` relaunch under torchrun, the process
    group, the run directory's lock around ``work(cfg, run_dir)``; exit 75 when its result was ``stopped``,
    else ``report(result, run_dir)`` on rank 0 and 0."""
    stop.install_signal_handlers()  # before the slow imports: a batch script's USR1 must never kill a starting task
    from ..config import load_config
    from ..preflight import launch_world_size, require

    cfg = load_config(args.job, args.overrides)  # validate before launching N processes
    if check is not None:
        check(cfg)
    # The preflight of `distst check` (a resume's world size included): nothing is written or started if it fails.
    require(cfg, args.job, world_size=launch_world_size(args.nproc))
    relaunched = relaunch_if_requested(args, command, cfg.run_dir())
    if relaunched is not None:
        return relaunched
    from .. import rundir
    from ..distributed import rank
    from ..launcher import report_hang, under_launcher
    from ..train.engine import prepare_process_env, setup_distributed
    from ..train.watchdog import CollectiveFailed, collective_failures

    prepare_process_env()
    setup_distributed(cfg.train.collective_timeout)  # ranks share the lock: rank 0 takes it and tells the others
    run_dir = cfg.run_dir()
    try:
        with rundir.exclusive(run_dir), collective_failures():  # once for the whole command: each train() inside
            result = work(cfg, run_dir)
    except CollectiveFailed as failed:  # a timed-out collective or a lost peer: one line, 75 for a requeue
        if not under_launcher():
            raise  # the CLI prints it
        if failed.hung:
            report_hang(f"distst: {failed}")  # the launcher ends the other ranks and says it once
        return EXIT_REQUEUE  # a lost peer: the launcher names the rank that died
    if result.stopped:
        return EXIT_REQUEUE
    if report is not None and rank() == 0:
        report(result, run_dir)
    return 0


def schedule_check(command: str) -> Callable[[Config], None]:
    """The check of ``distst imp`` / ``distst prune``: the job's method is one the command runs (its registry
    record says so), and its schedule accepts the job."""

    def check(cfg: Config) -> None:
        from .. import registry
        from ..config import ConfigError
        from ..prune.schedule import schedule_class

        record = registry.method_record(cfg.prune.method)
        if record.command != command:
            ours = registry.methods_run_by(command)
            label = getattr(registry.method_record(ours[0]).section, "schedule_class", None)
            raise ConfigError(f"distst {command} needs a {label.label if label else command} method, prune.method="
                              f"{' | '.join(ours)} (got {cfg.prune.method}, which runs with distst {record.command})")
        schedule = schedule_class(cfg)
        if schedule is not None:
            schedule.validate(cfg)

    return check


def run_schedule(cfg: Config, run_dir: Path) -> Any:
    """The work of ``distst imp`` and ``distst prune``: the one schedule driver."""
    from ..prune.schedule import run_schedule as drive

    return drive(cfg, run_dir)


def worker_main(argv: Sequence[str]) -> int:
    """A torchrun worker: ``distst COMMAND ...`` with its exit code recorded for the launcher."""
    stop.install_signal_handlers()  # before announcing readiness: from then on the launcher may signal us
    status, rank = WorkerStatus(Path(os.environ[STATUS_DIR_ENV])), int(os.environ["RANK"])
    status.ready(rank)
    code = 1
    try:
        from ..cli import main

        code = main(list(argv))
    except SystemExit as ended:  # argparse errors, sys.exit in a command
        code = 0 if ended.code is None else ended.code if isinstance(ended.code, int) else 1
    finally:
        status.exited(rank, code)
    return 0 if code == EXIT_REQUEUE else code  # a clean stop is no failure for torchrun


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
