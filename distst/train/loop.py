"""The one training loop: every model, every method, one process or many.

Read top to bottom: build -> restore -> (batch, loss, backward, hooks, step) x N with logging, evaluation
and checkpoints -> final evaluation, model file, summary. Methods plug in through ``hooks.Method``; the
loop never knows which one is active.

Resume is bitwise on the CPU: the data stream is rebuilt at every checkpoint boundary for "epoch"
``step // checkpoint_every`` (and fast-forwarded inside it), so a resumed run sees exactly the batches an
uninterrupted one does; model, optimizer, scheduler, RNG of every rank and method state are restored.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from .. import atomic, stop
from ..config import Config, ConfigError
from ..data import TrainStream, eval_pairs
from ..evaluate import evaluate, stylized_grid
from ..models import build, frozen_copy, param_counts
from ..models.io import save_model
from ..models.weights import load_checked
from ..track import Tracker
from . import checkpoint
from .engine import DistInfo, initialize, setup_distributed
from .hooks import Method, TrainContext

#: Exit code after a SIGTERM/SIGUSR1 checkpoint: "stopped cleanly, run me again" (EX_TEMPFAIL).
EXIT_REQUEUE = 75


@dataclass
class TrainResult:
    steps: int
    stopped: bool
    summary: dict[str, Any] = field(default_factory=dict)


def _stop_agreed(request: stop.StopRequest, device: torch.device) -> bool:
    """Whether any rank was asked to stop: every rank then checkpoints the same step and returns."""
    flag = torch.tensor([1.0 if request.is_set() else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _batches(cfg: Config, info: DistInfo, step: int) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], dict]]:
    """Micro-batches from optimizer step ``step`` on: stream epoch ``step // checkpoint_every``, fast-forwarded.

    Each epoch (one checkpoint interval) holds ``checkpoint_every * gradient_accumulation_steps`` micro-batches.
    """
    per_epoch = cfg.train.checkpoint_every * cfg.deepspeed.gradient_accumulation_steps
    epoch, offset = divmod(step * cfg.deepspeed.gradient_accumulation_steps, per_epoch)
    while True:
        stream = TrainStream(cfg.data, rank=info.rank, world_size=info.world_size, epoch=epoch)
        batches = iter(stream)
        for _ in range(offset):  # only right after a mid-interval resume
            next(batches)
        for batch in itertools.islice(batches, per_epoch - offset):
            yield batch, stream.counters
        epoch, offset = epoch + 1, 0


def _mean_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, tensor.tolist(), strict=True)}


def train(cfg: Config, workdir: Path, method: Method | None = None, *, init_state: dict[str, torch.Tensor] | None = None,
          run_name: str | None = None, run_group: str | None = None,
          stop_request: stop.StopRequest | None = None) -> TrainResult:
    """Train ``cfg`` in ``workdir`` (resuming from its last checkpoint); returns when done or stopped."""
    method = method or Method()
    info = setup_distributed()
    if method.needs_full_parameters and cfg.deepspeed.zero_stage == 3:
        raise ConfigError(f"deepspeed.zero_stage=3 cannot be combined with prune.method={cfg.prune.method}: ZeRO-3 "
                          "partitions every parameter across ranks, so masks cannot be applied in place; use 0, 1 or 2")
    torch.use_deterministic_algorithms(cfg.train.deterministic)
    torch.manual_seed(cfg.train.seed)

    model = build(cfg.model)
    loss_net = frozen_copy(model.encoder).to(info.device)  # from the pretrained weights, before any rewinding
    if init_state is not None:
        load_checked(model, init_state, "the initial state")
    model.to(info.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=cfg.train.lr)
    decay = cfg.train.lr_decay
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1.0 + decay * s))
    engine = initialize(cfg, model, optimizer, scheduler, info.device)
    dtype = next(engine.module.parameters()).dtype
    loss_net.to(dtype)
    weights = model.loss_weights(cfg.train)

    ckpt_root = workdir / "checkpoints"
    resume_from = checkpoint.latest(ckpt_root)
    state: dict[str, Any] = {"step": 0, "train_s": 0.0, "images": 0, "wall_s": 0.0}
    if resume_from is not None:
        state = checkpoint.load({"main": engine}, resume_from, info)
        method.load_state_dict(state.get("method", {}))
    step = int(state["step"])
    ctx = TrainContext(cfg=cfg, model=engine.module, workdir=workdir, dist=info, step=step, engine=engine,
                       loss_net=loss_net)
    method.on_train_start(ctx)

    if info.is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.yaml").write_text(cfg.to_yaml())
    tracker = Tracker(cfg.tracking, workdir, config=cfg.model_dump(mode="json"), name=run_name or workdir.name,
                      group=run_group, enabled=info.is_main, resume_step=step if resume_from else None)
    eval_content, eval_style = (t.to(info.device, dtype) for t in eval_pairs(cfg.data))
    if info.is_main and resume_from is not None:
        tqdm.write(f"resuming {workdir} from {resume_from.name}")

    started = time.perf_counter()
    stopped = False
    last_eval: dict[str, float] = {}
    bar = tqdm(total=cfg.train.steps, initial=step, disable=not info.is_main, desc=workdir.name, unit="step",
               dynamic_ncols=True)

    earlier_wall_s = float(state["wall_s"])  # wall time of the sessions before this resume

    def save_checkpoint() -> None:
        saved = {**state, "step": step, "wall_s": earlier_wall_s + time.perf_counter() - started,
                 "method": method.state_dict()}
        checkpoint.save({"main": engine}, ckpt_root, step, saved, info, cfg.train.keep_checkpoints)

    def run_evaluation() -> dict[str, float]:
        # Every rank evaluates (rank 0 logs): under ZeRO-3 a forward pass needs all ranks to gather parameters.
        metrics = evaluate(engine.module, loss_net, eval_content, eval_style)
        method.on_evaluate(ctx, metrics)
        tracker.log(metrics, step)
        return metrics

    batches = _batches(cfg, info, step)
    request = stop_request or stop.PROCESS
    if True:
        while step < cfg.train.steps:
            tick = time.perf_counter()
            terms_sum: dict[str, float] = {}
            for _ in range(cfg.deepspeed.gradient_accumulation_steps):
                (content, style), counters = next(batches)
                content, style = content.to(info.device, dtype), style.to(info.device, dtype)
                terms = engine.module.loss_terms(content, style, loss_net)
                extra = method.extra_losses(ctx)
                loss = sum(weights[k] * v for k, v in terms.items()) + sum(extra.values())
                engine.backward(loss)
                if engine.is_gradient_accumulation_boundary():
                    method.before_optimizer_step(ctx)
                engine.step()
                for key, value in {"loss": loss, **terms, **extra}.items():
                    terms_sum[key] = terms_sum.get(key, 0.0) + float(value.detach())
            step += 1
            ctx.step = step
            ctx.metrics = {k: v / cfg.deepspeed.gradient_accumulation_steps for k, v in terms_sum.items()}
            method.after_optimizer_step(ctx)
            elapsed = time.perf_counter() - tick
            state["train_s"] += elapsed
            state["images"] += content.shape[0] * cfg.deepspeed.gradient_accumulation_steps * info.world_size

            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                row = _mean_across_ranks(ctx.metrics, info.device)
                per_process = content.shape[0] * cfg.deepspeed.gradient_accumulation_steps / elapsed
                row.update(lr=scheduler.get_last_lr()[0], images_per_s=per_process * info.world_size,
                           images_per_s_per_process=per_process,
                           **{f"data/{k}": v for k, v in counters.items()})
                tracker.log(row, step)
                bar.set_postfix(loss=f"{row['loss']:.4g}", E=f"{last_eval.get('total_error', float('nan')):.4g}",
                                img_s=f"{row['images_per_s']:.1f}", refresh=False)
            if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
                last_eval = run_evaluation()
            if info.is_main and (step % cfg.tracking.image_every == 0 or step == cfg.train.steps):
                grid = stylized_grid(engine.module, eval_content, eval_style, workdir / "samples" / f"step_{step:08d}.png")
                tracker.log_image("samples", grid, step, caption="content | style | stylized")
            stopped = _stop_agreed(request, info.device)
            if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps or stopped:
                save_checkpoint()
            bar.update(1)
            if stopped:
                break
    bar.close()
    if stopped:
        request.clear()

    if not stopped and not last_eval:  # resumed after the last step had been checkpointed
        last_eval = run_evaluation()
    summary: dict[str, Any] = {}
    if not stopped:
        wall_s = earlier_wall_s + time.perf_counter() - started
        summary = _finish(cfg, workdir, engine.module, info, state, last_eval, wall_s, step)
        tracker.summary(summary["final"])
    where = tracker.where()
    tracker.finish()
    if info.is_main:
        tqdm.write(f"{'stopped at' if stopped else 'finished'} step {step}: {workdir}" + (f"\n{where}" if where else ""))
    return TrainResult(steps=step, stopped=stopped, summary=summary)


def _finish(cfg: Config, workdir: Path, model: torch.nn.Module, info: DistInfo, state: dict[str, Any],
            final: dict[str, float], wall_s: float, step: int) -> dict[str, Any]:
    """Write ``model.pt`` and ``summary.json`` (rank 0); returns the summary."""
    nonzero = {name: sum(int(torch.count_nonzero(p)) for p in part.parameters())
               for name, part in model.groups().items()}
    summary = {
        "steps": step,
        "final": final,
        "params": param_counts(model),
        "nonzero_params": {**nonzero, "total": sum(nonzero.values())},
        "wall_s": round(wall_s, 3),
        "images_per_s": round(state["images"] / state["train_s"], 3) if state["train_s"] else None,
        "world_size": info.world_size,
        "model_file": "model.pt",
    }
    if info.is_main:
        save_model(model, cfg.model, workdir / "model.pt")
        atomic.write_json(workdir / "summary.json", summary)
    dist.barrier()
    return summary
