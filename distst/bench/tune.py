"""``distst bench tune``: the same N tiny IMP trials run one after another in this process (no Ray), then
through Ray Tune 1 at a time and 2 at a time; prints the wall times, the speed-up of running 2 at once and the
time Ray adds per trial (actor start, imports, reporting)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ..errors import UserError

HELP = "Ray Tune: N tiny IMP trials sequentially (plain and through Ray) and 2 at a time"

JOB = Path(__file__).resolve().parents[2] / "jobs" / "local" / "imp_adain.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=4, help="number of trials (different prune.rate), at least 2")
    parser.add_argument("--steps", type=int, default=30, help="training steps per IMP level")
    parser.add_argument("--crop", type=int, default=64, help="crop size in pixels")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")


def tiny_overrides(steps: int, crop: int) -> dict[str, object]:
    from ..presets import tiny_settings

    return tiny_settings(steps=steps, crop=crop, train__checkpoint_every=steps, train__eval_every=steps,
                         train__log_every=steps, prune__rounds=1, prune__rewind_step=0)


def rates(trials: int) -> list[float]:
    return [round(0.1 + 0.6 * i / max(1, trials - 1), 3) for i in range(trials)]


def plain_sequential(args: argparse.Namespace, root: Path) -> float:
    import torch

    from ..config import load_config, with_overrides
    from ..prune import run_schedule
    from ..sweep.trial import prepare_process_env

    torch.set_num_threads(1)  # as one trial with 1 CPU gets under Ray
    prepare_process_env(single_process=True)  # what each trial does first: a world of one, as the CLI sets up
    base = load_config(JOB, tiny_overrides(args.steps, args.crop))
    started = time.perf_counter()
    for i, rate in enumerate(rates(args.trials)):
        run_schedule(with_overrides(base, {"prune.rate": rate, "run.out_dir": str(root / f"plain_{i}")}), root / f"plain_{i}")
    return time.perf_counter() - started


def through_ray(args: argparse.Namespace, root: Path, concurrency: int) -> float:
    import yaml

    from ..sweep.runner import run_sweep
    from ..sweep.spec import load_sweep

    sweep = root / f"bench_{concurrency}.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": f"bench_{concurrency}", "job": str(JOB), "overrides": tiny_overrides(args.steps, args.crop),
        "space": {"prune.rate": {"grid": rates(args.trials)}}, "resources": {"cpus": 1},
        "concurrency": concurrency, "max_failures": 0}))
    spec = load_sweep(sweep)
    started = time.perf_counter()
    outcome = run_sweep(spec, root / f"ray_{concurrency}", resume=False)
    wall = time.perf_counter() - started
    failed = [r for r in outcome.results if r.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} bench trial(s) failed: {failed[0].error}")
    return wall


def run(args: argparse.Namespace) -> int:
    import os

    import ray
    from rich.console import Console
    from rich.table import Table

    if args.trials < 2:
        raise UserError(f"--trials {args.trials}: the benchmark compares 1 and 2 trials at a time, so it needs at least 2")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TQDM_DISABLE", "1")
    with tempfile.TemporaryDirectory(prefix="distst-bench-tune-") as tmp:
        root = Path(tmp)
        plain = plain_sequential(args, root)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            ray_one = through_ray(args, root, concurrency=1)
            ray_two = through_ray(args, root, concurrency=2)
        finally:
            ray.shutdown()
    n = args.trials
    table = Table(title=f"distst bench tune: {n} IMP trials (2 levels x {args.steps} steps, {args.crop} px, "
                        "1 CPU each, 2 CPUs)")
    for column in ("mode", "wall s", "s per trial", "speed-up vs plain", "Ray overhead per trial s"):
        table.add_column(column, justify="right")
    table.add_row("plain, sequential (no Ray)", f"{plain:.1f}", f"{plain / n:.1f}", "1.00", "-")
    table.add_row("Ray Tune, 1 at a time", f"{ray_one:.1f}", f"{ray_one / n:.1f}", f"{plain / ray_one:.2f}",
                  f"{(ray_one - plain) / n:.1f}")
    table.add_row("Ray Tune, 2 at a time", f"{ray_two:.1f}", f"{ray_two / n:.1f}", f"{plain / ray_two:.2f}", "-")
    Console(width=140).print(table)
    print(f"2 at a time vs 1 at a time through Ray: {ray_one / ray_two:.2f}x")
    if args.json:
        from ..atomic import write_json

        write_json(Path(args.json), {"trials": n, "steps": args.steps, "crop": args.crop, "plain_s": plain,
                                     "ray_one_at_a_time_s": ray_one, "ray_two_at_a_time_s": ray_two,
                                     "ray_overhead_per_trial_s": (ray_one - plain) / n,
                                     "two_over_one": ray_one / ray_two})
    return 0
