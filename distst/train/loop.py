"""The one training loop: every model, every method, one process or many, from any thread.

Read top to bottom: build (and let the method change the model) -> one DeepSpeed engine per optimizer stage
the model declares -> restore -> (batch; per stage: losses + the method's extra losses, backward, gradient
edits, step) x N with logging, evaluation and checkpoints -> final evaluation, the method's end hook, model
file, summary. Methods plug in through ``hooks.Method``; the loop never knows which one is active, and never
which model: it asks the model for its stages, losses, loss network and errors.

It never installs signal handlers: it polls a ``StopRequest`` (the CLI's signal handlers set the process's;
a Tune trial or a test sets its own) and checkpoints and returns at the next step boundary.

Resume is bitwise on the CPU: a run has one data stream whatever ``checkpoint_every``, every rank saves its
stream's position with each checkpoint and a resumed run continues it (see ``distst.data.loader``), so it sees
exactly the batches an uninterrupted one does; every engine, the RNG of every rank and the method state are
restored. One ``Checkpointer`` holds what is saved, by name (``checkpoint.py``); one ``RunDir`` holds the lock,
the resume check and the files written beside the checkpoints (``distst.rundir``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from .. import registry, rundir
from ..config import Config, ConfigError, ModelSection
from ..data import TrainStream, eval_pairs
from ..evaluate import evaluate, fp32_view, gathered, stylized_grid
from ..masters import fp32_state_dict, use_fp32_masters
from ..models import DiststModel, Stage, build
from ..models.io import read_model_file
from ..models.plan import plan_differences
from ..stop import PROCESS, StopRequest
from ..track import Tracker
from ..video.evaluation import TemporalEvaluation
from ..weights import load_checked
from . import divergence, elastic
from .checkpoint import Checkpointer, Restored
from .engine import DistInfo, check_deterministic, initialize, resolve_precision, setup_distributed
from .hooks import GradientAccess, Method, StepInputs, TrainContext
from .watchdog import StepWatchdog, watched


@dataclass
class TrainResult:
    steps: int
    stopped: bool
    summary: dict[str, Any] = field(default_factory=dict)


def _step_outcome(terms_sum: dict[str, torch.Tensor], accumulation: int, request: StopRequest,
                  device: torch.device) -> tuple[dict[str, float], bool, bool]:
    """This rank's mean loss terms of the step, whether any rank's were not finite, and whether any rank was
    asked to stop (every rank then checkpoints the same step and returns): one all-reduce and one host sync
    per step, so a GPU step never waits on the host more than once."""
    values = torch.stack(list(terms_sum.values())) / accumulation
    flags = torch.stack([(~torch.isfinite(values)).any().float(),
                         torch.tensor(float(request.is_set()), device=values.device)]).to(device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    *means, diverged, stop = torch.cat([values.to(device), flags]).tolist()
    return dict(zip(terms_sum, means, strict=True)), diverged > 0, stop > 0


class _DataPosition:
    """The data stream's position as a checkpointed object (``data_position``, per rank): restored before the
    stream exists, which then starts from it; saved from the running stream."""

    def __init__(self) -> None:
        self.stream: TrainStream | None = None
        self.restored: Any = None

    def state_dict(self) -> Any:
        assert self.stream is not None, "saved before the stream started"
        return self.stream.position()

    def load_state_dict(self, state: Any) -> None:
        self.restored = state

    @staticmethod
    def regroup(states: list[Any]) -> Any:
        """After a resume with another number of processes: every old rank's position, which the stream merges
        and deals out again (``distst.data.loader``)."""
        return {"regroup": states}


class _RankState:
    """The model's ``rank_state()`` as a checkpointed object (``model_rank_state``, per rank): DeepSpeed saves
    rank 0's module only."""

    def __init__(self, model: DiststModel) -> None:
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.rank_state().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_rank_state(state)

    def regroup(self, states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if any(t.numel() for state in states for t in state.values()):
            raise elastic.CannotRegroup(elastic.rank_state_refusal(states[0]))
        return self.state_dict()  # nothing of its own: as built


def _batches(cfg: Config, info: DistInfo, data: _DataPosition, restored: Restored | None
             ) -> Iterator[tuple[tuple[torch.Tensor, ...], dict]]:
    """The run's micro-batches, continued from this rank's restored position (a fresh run: from the start).

    One stream for the whole run, so the data order does not depend on ``train.checkpoint_every``; ``data``
    saves its position with every checkpoint.
    """
    # A checkpoint from before data positions were saved: a stream of its own, not a replay of the first batches.
    epoch = restored.step if restored is not None and "data_position" not in restored.names else 0
    stream = TrainStream(cfg.data, rank=info.rank, world_size=info.world_size, epoch=epoch, position=data.restored)
    data.stream = stream
    return ((batch, stream.counters) for batch in stream)


def _record_resplit(tracker: Tracker, old_world: int, world: int, step: int, cfg: Config, workdir: Any) -> None:
    """The re-split in metrics.jsonl and one line: the per-process batch is kept, so the global one changes."""
    per_step = cfg.data.batch_size * cfg.deepspeed.gradient_accumulation_steps
    if tracker.metrics is not None:
        tracker.metrics.write({"step": step, "world_size": {"from": old_world, "to": world},
                               "global_batch": {"from": per_step * old_world, "to": per_step * world}})
    if dist.get_rank() == 0:
        tqdm.write(f"distst: {workdir} resumes at step {step} with {world} process(es) instead of {old_world}: the "
                   f"data stream is re-split, the global batch is {per_step * world} (was {per_step * old_world})")


def _mean_across_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, tensor.tolist(), strict=True)}


InitFile = tuple[ModelSection, dict[str, torch.Tensor]]  # a model file's section and weights (read_model_file)


def read_init(cfg: Config) -> InitFile | None:
    """``model.init_from``'s section and weights, or None: read once per ``train()``, which plans and loads from it."""
    return read_model_file(cfg.model.init_from) if cfg.model.init_from else None


def with_init_plan(cfg: Config, init: InitFile | None = None) -> Config:
    """``cfg`` with ``model.plan`` taken from ``model.init_from`` (the layers that differ from the default), so the
    run's resolved config records the architecture it trains; a conflicting explicit plan is refused.
    ``init``: the file as ``read_init`` read it (default: read it here)."""
    source = cfg.model.init_from
    if not source:
        return cfg
    saved, _ = init if init is not None else read_model_file(source)
    if saved.name != cfg.model.name:
        raise ConfigError(f"model.init_from={source} holds a {saved.name} model, but model.name={cfg.model.name}")
    model_class = type(cfg.model).model_class
    plan = plan_differences(model_class.resolve_plan(saved), model_class.default_plan(cfg.model.width))
    if cfg.model.plan is not None and model_class.resolve_plan(cfg.model) != model_class.resolve_plan(saved):
        raise ConfigError(f"model.plan differs from the plan in model.init_from={source}; leave model.plan out "
                          "to take the file's")
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"plan": plan or None})})


def build_for_training(cfg: Config, init_state: dict[str, torch.Tensor] | None = None, init: InitFile | None = None
                       ) -> tuple[DiststModel, torch.nn.Module | None]:
    """The model to train and its loss network: from the config's plan, then the weights of
    ``model.init_from`` (a model file; ``init``: as ``read_init`` read it) and ``init_state`` (rewound weights)."""
    model = build(cfg.model, part_weights=not cfg.model.init_from)  # the file's weights replace them
    loss_net = model.loss_network()  # from pretrained (or initial) weights, before any loading or rewinding
    if init is None and cfg.model.init_from:
        init = read_init(cfg)
    start_state = init[1] if init is not None else None
    for state, source in ((start_state, cfg.model.init_from), (init_state, "the initial state")):
        if state is not None:
            load_checked(model, state, str(source))
    return model, loss_net


@dataclass
class _StageRun:
    spec: Stage
    engine: Any
    grads: GradientAccess


def _start_stages(cfg: Config, model: DiststModel, info: DistInfo) -> list[_StageRun]:
    """One DeepSpeed engine per optimizer stage (a single-stage model's engine wraps the whole model)."""
    specs = model.stages(cfg.train)
    groups = model.groups()
    runs = []
    for spec in specs:
        if problem := spec.problem(cfg.data.batch_size, cfg.deepspeed.gradient_accumulation_steps):
            raise ConfigError(problem)
        module = model if len(specs) == 1 else torch.nn.ModuleDict({g: groups[g] for g in spec.groups})
        params = [p for g in spec.groups for p in groups[g].parameters() if p.requires_grad]
        optimizer = spec.optimizer(params)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, spec.lr_lambda)
        engine = initialize(cfg, module, optimizer, scheduler, info.device)
        runs.append(_StageRun(spec, engine, GradientAccess(engine)))
    return runs


def train(cfg: Config, workdir: Path, method: Method | None = None, *, init_state: dict[str, torch.Tensor] | None = None,
          run_name: str | None = None, run_group: str | None = None, stop: StopRequest | None = None) -> TrainResult:
    """Train ``cfg`` in ``workdir`` (resuming from its last checkpoint); returns when done or stopped.

    ``stop`` (default: the process's, set by the CLI's signal handlers) makes it checkpoint at the next step
    boundary and return with ``stopped=True``; it may be set from another thread.

    ``workdir`` is locked for the call (a second process is refused; see ``distst.rundir``), and a resume with
    a config that differs from the stored one in more than the keys safe to change is refused.
    """
    setup_distributed(cfg.train.collective_timeout)  # the lock and the config check are decided on rank 0 and shared
    run_dir = rundir.RunDir(workdir)
    with run_dir.locked(), watched():  # watched: the hang watchdog of the call ends with it, also on an error
        init = read_init(cfg)  # the one read of model.init_from: its plan here, its weights in the model
        cfg = with_init_plan(cfg, init)
        changes = run_dir.check_resume(cfg)
        return _train(cfg, run_dir, method, init=init, init_state=init_state, run_name=run_name, run_group=run_group,
                      stop=stop, config_changes=changes)


def _train(cfg: Config, run_dir: rundir.RunDir, method: Method | None, *, init: InitFile | None,
           init_state: dict[str, torch.Tensor] | None, run_name: str | None, run_group: str | None,
           stop: StopRequest | None, config_changes: dict[str, tuple[Any, Any]]) -> TrainResult:
    method = method or Method()
    request = stop or PROCESS
    workdir = run_dir.path
    info = setup_distributed()
    if zero3 := registry.method_record(cfg.prune.method).zero3_problem(cfg.deepspeed.zero_stage):  # = preflight's
        raise ConfigError(zero3)
    check_deterministic(cfg, info.device)
    torch.use_deterministic_algorithms(cfg.train.deterministic)
    torch.manual_seed(cfg.train.seed)

    model, loss_net = build_for_training(cfg, init_state, init)
    method.prepare_model(model, cfg)
    model.to(info.device)
    stages = _start_stages(cfg, model, info)
    engines = {run.spec.name: run.engine for run in stages}
    dtype = next(model.parameters()).dtype
    # The loss network in the training precision for the losses, and in fp32 for evaluation.
    eval_loss_net = loss_net.to(info.device) if loss_net is not None else None
    if loss_net is not None and dtype != torch.float32:
        loss_net = copy.deepcopy(loss_net).to(dtype)
    weights = model.loss_weights()
    prefix = len(stages) > 1  # several stages log as "<stage>/<term>"

    data = _DataPosition()
    # The names are those of the files' keys (state.pt; rng_rank<r>.pt): checkpoints of earlier versions load.
    checkpointer = Checkpointer(run_dir.checkpoints, info, engines, shared={"method": method},
                                per_rank={"data_position": data, "model_rank_state": _RankState(model)},
                                keep=cfg.train.keep_checkpoints)
    restored = checkpointer.load()  # None: a fresh run; an older checkpoint may lack some names (see Restored)
    state: dict[str, Any] = {"train_s": 0.0, "images": 0, "wall_s": 0.0}
    if restored is not None:
        state = {k: v for k, v in restored.state.items() if k != "step"}
    step = restored.step if restored is not None else 0
    ctx = TrainContext(cfg=cfg, model=model, workdir=workdir, dist=info, step=step, engines=engines,
                       loss_net=loss_net)
    model.features.want(method.feature_requests(), model)
    method.on_train_start(ctx)

    # Read before anything is written: a data problem must leave no config.yaml or metrics.jsonl behind.
    eval_content, eval_style = (t.to(info.device, torch.float32) for t in eval_pairs(cfg.data))
    temporal = TemporalEvaluation.from_config(cfg.temporal, eval_content.shape[-1], model.input_multiple,
                                              model.min_size).to(info.device)
    run_dir.write_config(cfg)
    tracker = Tracker(cfg.tracking, workdir, config=cfg.model_dump(mode="json"), name=run_name or workdir.name,
                      group=run_group, enabled=info.is_main, resume_step=step if restored else None)
    if config_changes and restored is not None and tracker.metrics is not None:
        tracker.metrics.write({"step": step, **rundir.change_record(config_changes)})  # keys safe to change
    if restored is not None and restored.resized_from is not None:
        _record_resplit(tracker, restored.resized_from, info.world_size, step, cfg, workdir)
    if info.is_main and restored is not None:
        tqdm.write(f"resuming {workdir} from {restored.path.name}")
    # -- outputs never go stale (distst.outputs): an earlier finish's summary.json and model.pt go before a new step
    if step < cfg.train.steps:
        run_dir.retire_outputs(cfg.train.steps)
    # --

    started = time.perf_counter()
    stopped = False
    last_eval: dict[str, float] = {}
    bar = tqdm(total=cfg.train.steps, initial=step, disable=not info.is_main, desc=workdir.name, unit="step",
               dynamic_ncols=True)

    earlier_wall_s = float(state["wall_s"])  # wall time of the sessions before this resume
    # -- the hang watchdog (distst.train.watchdog): fed at step boundaries; evaluations and checkpoints paused out
    watchdog = StepWatchdog.for_run(cfg.train, info.rank, step, restored.step if restored else None, workdir)
    # --

    @watchdog.pausing
    def save_checkpoint() -> None:
        divergence.check_parameters(model.parameters(), step, workdir, info.device)  # never save NaN weights
        checkpointer.save(step, {**state, "wall_s": earlier_wall_s + time.perf_counter() - started})
        watchdog.checkpointed(step)

    @watchdog.pausing
    def run_evaluation() -> dict[str, float]:
        # Every rank evaluates (rank 0 logs): under ZeRO-3 a forward pass needs all ranks to gather parameters.
        with fp32_view(model) as fp32_model:
            metrics = evaluate(fp32_model, eval_loss_net, eval_content, eval_style)
            metrics.update(temporal(fp32_model, eval_style))  # beside E, never in it
        model.features.take()  # what the evaluation's forwards recorded is no training step's
        divergence.check_metrics(metrics, step, workdir, info.device)
        method.on_evaluate(ctx, metrics)
        tracker.log(metrics, step)
        return metrics

    def micro_step(batch: tuple[torch.Tensor, ...], terms_sum: dict[str, torch.Tensor]) -> None:
        for run in stages:
            for part in run.spec.parts(batch):  # one optimizer step per part (Stage.repeat: a GAN's n_critic)
                terms = model.stage_losses(run.spec.name, part, loss_net)
                extra = method.extra_losses(ctx, StepInputs(run.spec.name, part, model.features.take()))
                if extra.keys() & terms.keys():  # the log would show one under the other's name
                    raise ValueError(f"the method's extra losses {sorted(extra.keys() & terms.keys())} have the "
                                     f"names of the model's loss terms; rename them")
                loss = sum(weights[k] * v for k, v in terms.items()) + sum(extra.values())
                run.engine.backward(loss)
                boundary = run.engine.is_gradient_accumulation_boundary()
                if boundary:
                    method.edit_gradients(ctx, run.spec.name, run.grads)
                run.engine.step()
                if boundary and run.spec.after_step is not None:
                    run.spec.after_step()
                for key, value in {"loss": loss, **terms, **extra}.items():
                    key = f"{run.spec.name}/{key}" if prefix else key
                    # Summed on the device (read once per step: _step_outcome), as the mean over the parts.
                    value = value.detach().float() / run.spec.repeat
                    terms_sum[key] = terms_sum[key] + value if key in terms_sum else value

    batches = _batches(cfg, info, data, restored)
    accumulation = cfg.deepspeed.gradient_accumulation_steps
    while step < cfg.train.steps:
        tick = time.perf_counter()
        terms_sum: dict[str, torch.Tensor] = {}
        for _ in range(accumulation):
            batch, counters = next(batches)
            batch = tuple(t.to(info.device, dtype, non_blocking=True) for t in batch)  # the loader pins memory
            micro_step(batch, terms_sum)
        step += 1
        ctx.step = step
        ctx.metrics, diverged, stopped = _step_outcome(terms_sum, accumulation, request, info.device)
        if diverged:  # before anything saves this step
            divergence.raise_diverged(ctx.metrics, step, workdir)
        method.after_optimizer_step(ctx)
        watchdog.finished(step)
        elapsed = time.perf_counter() - tick
        images = batch[0].shape[0] * accumulation
        state["train_s"] += elapsed
        state["images"] += images * info.world_size

        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            row = _mean_across_ranks(ctx.metrics, info.device)
            row.update(lr=stages[0].engine.lr_scheduler.get_last_lr()[0],
                       images_per_s=images / elapsed * info.world_size, images_per_s_per_process=images / elapsed,
                       **{f"data/{k}": v for k, v in counters.items()})
            tracker.log(row, step)
            shown = row.get("loss", row.get(f"{stages[0].spec.name}/loss", float("nan")))
            bar.set_postfix(loss=f"{shown:.4g}", E=f"{last_eval.get('total_error', float('nan')):.4g}",
                            img_s=f"{row['images_per_s']:.1f}", refresh=False)
        if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
            last_eval = run_evaluation()
        if step % cfg.tracking.image_every == 0 or step == cfg.train.steps:
            path = workdir / "samples" / f"step_{step:08d}.png"
            with fp32_view(model) as fp32_model:
                grid = stylized_grid(fp32_model, eval_content, eval_style, path if info.is_main else None)
            if grid is not None:
                tracker.log_image("samples", grid, step, caption="content | style | stylized")
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps or stopped:
            save_checkpoint()
        bar.update(1)
        if stopped:
            break
    bar.close()
    watchdog.close()
    model.features.want((), model)
    if stopped:
        request.clear()

    if not stopped and not last_eval:  # resumed after the last step had been checkpointed
        last_eval = run_evaluation()
    summary: dict[str, Any] = {}
    if not stopped:
        # What the method folds and the model file holds: the trained fp32 weights (ZeRO-3: read at the save).
        in_module = use_fp32_masters(model)
        method.on_train_end(ctx)
        wall_s = earlier_wall_s + time.perf_counter() - started
        summary = _finish(run_dir, model, info, state, last_eval, wall_s, step, masters_in_module=in_module,
                          precision={"precision": resolve_precision(cfg, info.device),
                                     "communication_dtype": cfg.deepspeed.communication_dtype})
        tracker.summary(summary["final"])
    where = tracker.where()
    tracker.finish()
    if info.is_main:
        tqdm.write(f"{'stopped at' if stopped else 'finished'} step {step}: {workdir}" + (f"\n{where}" if where else ""))
    return TrainResult(steps=step, stopped=stopped, summary=summary)


def _finish(run_dir: rundir.RunDir, model: DiststModel, info: DistInfo, state: dict[str, Any], final: dict[str, float],
            wall_s: float, step: int, masters_in_module: bool, precision: dict[str, str]) -> dict[str, Any]:
    """Write ``model.pt`` and ``summary.json`` (rank 0); returns the summary. Under ZeRO-3 the parameters are
    gathered first (collective), so counts and the model file are of whole tensors."""
    with gathered(model):
        nonzero = {name: sum(int(torch.count_nonzero(p)) for p in part.parameters())
                   for name, part in model.groups().items()}
        counts = {name: sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in part.parameters())
                  for name, part in model.groups().items()}
        # The module itself once it holds the masters (a method may have folded into it since); ZeRO-3's
        # gathered masters otherwise (collective).
        weights = model.state_dict() if masters_in_module else fp32_state_dict(model)
        run_dir.write_model(model, weights, step=step)  # the step: readers compare it with the checkpoints'
    summary = {
        "steps": step,
        "final": final,
        "params": {**counts, "total": sum(counts.values())},
        "nonzero_params": {**nonzero, "total": sum(nonzero.values())},
        "wall_s": round(wall_s, 3),
        "images_per_s": round(state["images"] / state["train_s"], 3) if state["train_s"] else None,
        "world_size": info.world_size,
        **precision,
        "model_file": "model.pt",
    }
    run_dir.write_summary(summary)
    dist.barrier()
    return summary
