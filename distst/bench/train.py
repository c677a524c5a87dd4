"""``distst bench train``: images per second per process of a training step, per precision, with the data
loader's own rate beside it, so that one look says whether the data feeds the device.

For each precision (``deepspeed.precision``; default fp32 and bf16, one after the other in one process, so
their ratio comes from one run on one machine) the job is trained for ``--warmup`` + ``--steps`` optimizer
steps by the real loop, ``distst.train.train`` (with the job's method where ``distst train`` would run one),
in a fresh temporary run directory with tracking off. Checkpoints, evaluations and sample images are moved
past the last step: they are periodic costs, not a step's, and the loop's final evaluation, checkpoint and
model file come after the timed window. The job's ``train.log_every`` is kept: logging is part of training.

Timing: a ``Method`` hook (``after_optimizer_step``) reads the clock at the end of every optimizer step. Not
``metrics.jsonl``: the loop writes a rate only every ``train.log_every`` steps, each of that one step alone,
and no time stamp from which a start-up could be told; the hook counts every step of the window and all the
loop does between steps (waiting for the batch, the copy to the device, forward, backward, optimizer step,
logging). The loop calls it after the step's one host synchronisation, so on a GPU the clock reads a finished
step.

- **start-up s**: from just before ``train()`` is called to the end of the first optimizer step: the run
  directory's lock, the model, the DeepSpeed engines, the held-out pairs, the data workers' start and first
  batch, and the first step itself (first-use kernel choice or compilation). Imports (torch, DeepSpeed,
  distst) and the start of the process group are excluded: paid once per process, they are reported apart
  as **setup s**. The first precision measured also pays what the process does once on first use.
- **train img/s/process**: content images (as the loop counts them: ``data.batch_size`` times the gradient
  accumulation steps per optimizer step) over the time from the end of the last warm-up step to the end of
  the last timed step. Under several processes, the mean over ranks (start-up: the slowest rank's).
- **loader img/s**: ``TrainStream`` over the same data section (shards, crop, batch size, workers, seed), with
  nothing training, timed by ``distst.bench.data``'s helper over the batches of as many steps (at least
  ``LOADER_MIN_STEPS``: it is fast, and a short window is noise) after those of the warm-up steps; every rank
  at once, mean over ranks. Measured once, before the trainings: the data does not depend on the precision,
  and every precision's start-up then finds the shards equally cached. No copy to the device.
- **verdict**: ``data-bound`` when the loader alone delivers less than ``DATA_BOUND_MARGIN`` (1.2) times the
  training rate: it has no headroom left. On a CPU the loader's workers share the cores with training, so
  the loader-alone rate is an upper bound of what it delivers while training; with ``data.workers=0`` the
  batches are decoded inside the training step, and the training rate includes that.

``--nproc N`` re-runs the bench under torchrun exactly as ``distst train --nproc`` does
(``distst.launcher``). The temporary run directories are made by rank 0 (under ``TMPDIR``: on
several nodes it must be a shared folder) and removed at the end.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

HELP = ("images/s per process of a training step (real loop, per precision: fp32, bf16) beside the data loader's "
        "own rate: is the device fed?")
DEFAULT_JOB = "jobs/local/adain.yaml"
PRECISIONS = ("fp32", "bf16")
DATA_BOUND_MARGIN = 1.2  # loader rate / training rate below this: data-bound
LOADER_MIN_STEPS = 50  # the loader is timed over at least this many steps' batches: a short window is noise


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job", default=DEFAULT_JOB, help=f"job YAML to measure (default {DEFAULT_JOB})")
    p.add_argument("--precision", default=",".join(PRECISIONS), metavar="LIST",
                   help=f"comma-separated precisions to measure, in this order, of {', '.join(PRECISIONS)} "
                        f"(default {','.join(PRECISIONS)}; bf16 on a CPU runs the GPU path, its speed depends on the CPU)")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per precision (default 20)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps first, at least 1: the first step ends the start-up (default 3)")
    p.add_argument("--nproc", type=int, default=1,
                   help="processes on this machine (runs under torchrun); under torchrun/srun leave at 1")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the job, e.g. data.crop=128 data.workers=2")


def parse_precisions(text: str) -> list[str]:
    """``"fp32,bf16"`` -> ``["fp32", "bf16"]``; an unknown or repeated name is a user error."""
    from ..errors import UserError

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PRECISIONS]
    if not names or unknown:
        raise UserError(f"--precision {text}: {'unknown precision ' + ', '.join(unknown) if unknown else 'empty'}; "
                        f"choose from {', '.join(PRECISIONS)} (comma-separated)")
    if len(set(names)) != len(names):
        raise UserError(f"--precision {text}: a precision is named twice")
    return names


def bench_overrides(overrides: list[str], precision: str, out_dir: Path, total_steps: int) -> list[str]:
    """The job's overrides plus the bench's: this precision, a fresh run directory, tracking off, and nothing
    periodic (checkpoint, evaluation, sample image) before the last step."""
    return [*overrides, f"deepspeed.precision={precision}", f"run.out_dir={out_dir}", "tracking.backend=none",
            f"train.steps={total_steps}", f"train.checkpoint_every={total_steps}",
            f"train.eval_every={total_steps}", f"tracking.image_every={total_steps}"]


def verdict(loader_over_train: float) -> str:
    return "data-bound" if loader_over_train < DATA_BOUND_MARGIN else "compute-bound"


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    import tempfile

    from ..config import load_config
    from ..errors import UserError
    from ..launcher import relaunch_if_requested
    from ..preflight import require

    precisions = parse_precisions(args.precision)
    if args.steps < 1 or args.warmup < 1 or args.nproc < 1:
        raise UserError("--steps, --warmup and --nproc must be at least 1")
    total = args.warmup + args.steps
    scratch = Path(tempfile.gettempdir()) / "distst-bench-train"  # where the run directories will be made
    for precision in precisions:  # every config is checked before anything starts (a missing job: one line)
        cfg = load_config(args.job, bench_overrides(args.overrides, precision, scratch / precision, total))
        require(cfg, args.job)
    factory = _method_factory(cfg)

    options = ["--job", args.job, "--precision", ",".join(precisions), "--steps", str(args.steps),
               "--warmup", str(args.warmup), *(["--json", str(Path(args.json).absolute())] if args.json else [])]
    # ``relaunch_if_requested`` runs ``distst <command> <job> <overrides...>`` under torchrun: here the command
    # is ``bench``, ``train`` takes the job's place and this bench's options go along with the overrides.
    relaunched = relaunch_if_requested(argparse.Namespace(nproc=args.nproc, job="train",
                                                          overrides=[*options, *args.overrides]), "bench")
    if relaunched is not None:
        return relaunched

    results = measure(args.job, args.overrides, precisions, args.steps, args.warmup, factory, started)
    if results is None:  # not rank 0
        return 0
    print_results(results)
    if args.json:
        from .. import atomic

        atomic.write_json(args.json, results)
    return 0


def _method_factory(cfg: Any) -> Any:
    """The factory of the method ``distst train`` would run for this job; refused as ``train`` does."""
    from ..errors import UserError
    from ..registry import method_record

    record = method_record(cfg.prune.method)
    if record.factory is None:
        raise UserError(f"prune.method={cfg.prune.method} runs through its own command (distst "
                        f"{record.command}), not distst train: bench train measures what distst train runs")
    return record.factory


def measure(job: str, overrides: list[str], precisions: list[str], steps: int, warmup: int, factory: Any,
            started: float) -> dict[str, Any] | None:
    """Every precision's start-up and training rate and the loader's rate; the results on rank 0, else None.

    ``started``: the clock when the command started, so that imports and the process group count as setup."""
    import shutil
    import tempfile

    import torch

    from .. import rundir
    from ..config import load_config
    from ..train import Method, MethodList, train
    from ..train.engine import prepare_process_env, setup_distributed

    class _StepClock(Method):
        """Reads the clock at the end of every optimizer step (after the loop's host synchronisation)."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def after_optimizer_step(self, ctx: Any) -> None:
            self.times.append(time.perf_counter())

    prepare_process_env()
    info = setup_distributed()
    # Rank 0 makes the folder and tells the others (a collective: on GPUs it also starts the communicator).
    root = Path(rundir.on_main_then_shared(lambda: tempfile.mkdtemp(prefix="distst-bench-train-")))
    setup_s = time.perf_counter() - started
    total = warmup + steps
    try:
        first = load_config(job, bench_overrides(overrides, precisions[0], root / precisions[0], total))
        loader = _across_ranks(loader_rate(first, warmup, max(steps, LOADER_MIN_STEPS), info.rank, info.world_size),
                               info.device)
        rows: dict[str, dict[str, Any]] = {}
        for precision in precisions:
            cfg = load_config(job, bench_overrides(overrides, precision, root / precision, total))
            clock = _StepClock()
            chosen = factory(cfg)  # None: plain training
            method = MethodList([chosen, clock]) if chosen is not None else clock
            begun = time.perf_counter()
            train(cfg, cfg.run_dir(), method)
            if len(clock.times) != total:
                raise RuntimeError(f"{precision}: {len(clock.times)} optimizer steps timed, {total} expected")
            images = steps * cfg.data.batch_size * cfg.deepspeed.gradient_accumulation_steps
            seconds = clock.times[-1] - clock.times[warmup - 1]
            mean = _across_ranks({"images_per_s": images / seconds, "seconds": seconds}, info.device)
            slowest = _across_ranks({"startup_s": clock.times[0] - begun}, info.device, op="max")
            ratio = loader["images_per_s"] / mean["images_per_s"]
            rows[precision] = {"startup_s": slowest["startup_s"], "train_images_per_s_per_process": mean["images_per_s"],
                               "train_seconds": mean["seconds"], "images_per_process": images,
                               "loader_over_train": ratio, "verdict": verdict(ratio)}
        torch.distributed.barrier()
    finally:
        if info.rank == 0:
            shutil.rmtree(root, ignore_errors=True)
    if info.rank != 0:
        return None
    device = str(info.device)
    if info.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(info.device)})"
    both = {"fp32", "bf16"} <= set(rows)
    return {
        "job": job, "overrides": list(overrides), "device": device, "world_size": info.world_size,
        "model": first.model.name, "width": first.model.width, "crop": first.data.crop,
        "batch_size": first.data.batch_size, "workers": first.data.workers,
        "gradient_accumulation_steps": first.deepspeed.gradient_accumulation_steps,
        "zero_stage": first.deepspeed.zero_stage, "steps": steps, "warmup": warmup,
        "setup_s": setup_s, "setup_measures": "imports and the process group's start, once per process",
        "startup_measures": "train() called -> end of the first optimizer step (imports excluded: setup_s)",
        "data_bound_margin": DATA_BOUND_MARGIN,
        "loader": {"images_per_s": loader["images_per_s"], "seconds": loader["seconds"],
                   "images_per_process": int(loader["images"])},
        "precisions": rows,
        "bf16_over_fp32": rows["bf16"]["train_images_per_s_per_process"] / rows["fp32"]["train_images_per_s_per_process"]
        if both else None,
    }


def loader_rate(cfg: Any, warmup: int, steps: int, rank: int, world_size: int) -> dict[str, float]:
    """This rank's ``TrainStream`` alone: content images per second over the batches of ``steps`` optimizer
    steps, after those of ``warmup`` (worker start, shuffle buffer fill)."""
    from ..data import TrainStream
    from .data import _images_per_s

    per_step = cfg.deepspeed.gradient_accumulation_steps
    stream = TrainStream(cfg.data, rank=rank, world_size=world_size)
    rate, seconds = _images_per_s(_content_batches(stream), steps * per_step, warmup * per_step)
    return {"images_per_s": rate, "seconds": seconds, "images": float(steps * per_step * cfg.data.batch_size)}


def _content_batches(stream: Any) -> Any:
    """The content tensors of a (content, style) stream, which ``_images_per_s`` counts; closing this generator
    closes the stream's (and stops its DataLoader workers)."""
    batches = iter(stream)
    try:
        for content, *_ in batches:
            yield content
    finally:
        batches.close()


def _across_ranks(values: dict[str, float], device: Any, op: str = "mean") -> dict[str, float]:
    """``values`` averaged (or the maximum, ``op="max"``) over the ranks: a collective."""
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    scale = 1 if op == "max" else dist.get_world_size()
    return {k: float(v) / scale for k, v in zip(keys, tensor.tolist(), strict=True)}


def print_results(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = results["precisions"]
    loader = results["loader"]["images_per_s"]
    title = (f"distst bench train: {results['job']} ({results['model']}, width {results['width']}, crop "
             f"{results['crop']}, batch {results['batch_size']}, {results['workers']} workers), {results['device']}, "
             f"{results['world_size']} process(es), {results['steps']} timed steps after {results['warmup']}")
    table = Table(title=title, caption=f"setup (imports, process group; once): {results['setup_s']:.1f} s. "
                                       f"data-bound: loader < {results['data_bound_margin']}x train")
    # Headers break where told, numbers and verdicts never: the table fits 80 columns.
    for column in ("precision", "start-up\ns", "train\nimg/s/proc", "loader\nimg/s", "loader/\ntrain", "verdict"):
        left = column in ("precision", "verdict")
        table.add_column(column, justify="left" if left else "right", no_wrap=True,
                         min_width=len("compute-bound") if column == "verdict" else None)
    for name, row in rows.items():
        table.add_row(name, f"{row['startup_s']:.2f}", f"{row['train_images_per_s_per_process']:.1f}", f"{loader:.1f}",
                      f"{row['loader_over_train']:.2f}x", row["verdict"])
    ratio = results["bf16_over_fp32"]
    if ratio is not None:
        table.add_row("bf16/fp32", "", f"{ratio:.2f}x", "", "", "", style="bold")
    Console().print(table)
