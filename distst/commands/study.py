"""``distst study STUDY.yaml [--out DIR]``: compression runs of one model, measured and timed the same way."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from ..stop import EXIT_REQUEUE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="run a study (the dense baseline and each method's runs) and compare "
                                     "their final models: E, MACs, latency, the Pareto front",
                       description="Runs every unfinished run as a Ray Tune trial (local Ray, or --address), then "
                                   "evaluates every final model with one loss network and times it; writes "
                                   "summary.json, report.md and the Pareto plots to runs/study/<name>/ unless --out.")
    p.add_argument("study", help="study file (see jobs/local/study_adain.yaml, docs/study.md)")
    p.add_argument("--out", default=None, help="study directory (default runs/study/<study name>)")
    p.add_argument("--address", default=None, help="a running Ray cluster ('auto' or HOST:PORT)")
    p.add_argument("--cpus", type=float, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per model and size")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..study.pipeline import study
    from ..study.spec import load_study
    from .tune import start_ray

    file = Path(args.study)
    out = Path(args.out or Path("runs") / "study" / load_study(file).name)  # a bad file fails before Ray starts
    out.mkdir(parents=True, exist_ok=True)
    stopped = _stop_on_signals()
    start_ray(args.address, args.cpus)
    try:
        summary = study(file, out, args.repeats)
    except KeyboardInterrupt:
        if not stopped.is_set():
            raise
        summary = None
    if summary is None:
        print(f"study stopped with runs unfinished: `distst study {args.study}"
              f"{' --out ' + args.out if args.out else ''}` resumes them", file=sys.stderr)
        return EXIT_REQUEUE
    print(f"{len(summary['models'])} models: {out / 'report.md'}")
    return 0


def _stop_on_signals() -> threading.Event:
    """SIGUSR1 (Slurm's warning) and SIGTERM become Ray Tune's own graceful stop (SIGINT): every trial
    checkpoints at its next step; the event tells that stop from a user's Ctrl-C."""
    stopped = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopped.set()
        signal.raise_signal(signal.SIGINT)

    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return stopped
