"""Run under torchrun by tests: train a tiny job and record, per rank, its losses and a digest of its weights."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import StopAt, tiny_config  # noqa: E402

from distst.distill import with_distillation  # noqa: E402
from distst.masters import fp32_state_dict  # noqa: E402
from distst.models import build  # noqa: E402
from distst.prune.masks import MaskedTraining, full_masks, prunable_layers, prune_magnitude  # noqa: E402
from distst.stop import StopRequest  # noqa: E402
from distst.train import Method, MethodList, TrainContext, train  # noqa: E402


def weights_digest(model: torch.nn.Module) -> str:
    """A digest of the module's weights (bf16 in a bf16 run) and of the optimizer's fp32 masters. Collective."""
    digest = hashlib.sha256()
    for prefix, state in (("module", model.state_dict()), ("master", fp32_state_dict(model))):
        for name, tensor in sorted(state.items()):
            digest.update(f"{prefix}.{name}".encode())
            digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def optimizer_view(ctx: TrainContext, weight: torch.nn.Parameter) -> dict[str, torch.Tensor | None]:
    """The fp32 master copy and Adam moments of ``weight`` as the optimizer holds them: through DeepSpeed's
    API under ZeRO-1/2 (flat partitions), the DDP-bf16 optimizer's fp32 clone at ZeRO-0 bf16, else the plain
    optimizer's per-parameter state. Collective."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    master = safe_get_full_fp32_param(weight)
    if master is not None:
        return {"master": master, **{k: safe_get_full_optimizer_state(weight, k) for k in ("exp_avg", "exp_avg_sq")}}
    own = getattr(weight, "_distst_fp32_master", weight)  # distst.masters.link_masters' record at ZeRO-0 bf16
    optimizer = getattr(ctx.engine.optimizer, "optimizer", ctx.engine.optimizer)
    state = optimizer.state.get(own, {})
    return {"master": own.detach(), "exp_avg": state.get("exp_avg"), "exp_avg_sq": state.get("exp_avg_sq")}


class Probe(Method):
    """Records this rank's loss at every step, its live weights after the last one, and (with masks) how many
    pruned weights, fp32 master values or Adam moments at pruned positions are not exactly zero, and how many
    masked tensors it could read that way (all of them, or the check would pass vacuously)."""

    def __init__(self, masks: dict[str, torch.Tensor] | None = None) -> None:
        self.losses: list[float] = []
        self.digest = ""
        self.masks = masks
        self.masked_nonzero = 0
        self.masked_optimizer_nonzero = 0
        self.inspected: list[int] = []
        self.distill: list[float] = []

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        if "distill" in ctx.metrics:
            self.distill.append(ctx.metrics["distill"])
        # One loss per step: the loss, or with several optimizer stages (a GAN) their sum.
        self.losses.append(ctx.metrics["loss"] if "loss" in ctx.metrics else
                           sum(v for k, v in sorted(ctx.metrics.items()) if k.endswith("/loss")))
        self.digest = weights_digest(ctx.model)
        if self.masks is None:
            return
        layers = prunable_layers(ctx.model, ctx.cfg.prune.scope)
        inspected = 0
        for name, mask in self.masks.items():
            weight = layers[name].weight
            self.masked_nonzero += int(torch.count_nonzero(weight.detach()[~mask]))
            view = optimizer_view(ctx, weight)
            if all(v is not None for v in view.values()):
                inspected += 1
                self.masked_optimizer_nonzero += sum(int(torch.count_nonzero(v.view_as(mask)[~mask]))
                                                     for v in view.values())
        self.inspected.append(inspected)


class TightenAt(Method):
    """At one step, prunes half of the remaining weights more (the same on every rank: weights agree)."""

    def __init__(self, step: int, masked: MaskedTraining, probe: Probe) -> None:
        self.step, self.masked, self.probe = step, masked, probe

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        if ctx.step == self.step:
            tighter = prune_magnitude(ctx.model, {k: v.cpu() for k, v in self.masked.masks.items()}, 0.5, 2,
                                      layerwise=False)
            self.masked.update_masks(tighter)
            self.probe.masks = {k: v.to(next(ctx.model.parameters()).device) for k, v in tighter.items()}


def main() -> None:
    out_dir, report_dir, overrides = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    settings = dict(o.split("=", 1) for o in overrides)
    mask_rate = float(settings.pop("mask_rate", 0))  # > 0: train with magnitude masks of this sparsity
    tighten_at = int(settings.pop("tighten_at", 0))  # > 0: tighten the masks after this step
    stop_after = int(settings.pop("stop_after", 0))  # > 0: checkpoint and stop after this step
    cfg = tiny_config(out_dir, **settings)
    probe, method = Probe(), None
    if mask_rate:
        torch.manual_seed(cfg.train.seed)  # the trainer's own initial weights, identical on every rank
        model = build(cfg.model)
        masks = prune_magnitude(model, full_masks(model, cfg.prune.scope), mask_rate, 1, layerwise=False)
        probe, masked = Probe(masks), MaskedTraining(masks)
        steps = [TightenAt(tighten_at, masked, probe)] if tighten_at else []
        method = MethodList([*steps, masked, probe])
    request = StopRequest()
    if stop_after:
        method = MethodList([method or probe, StopAt(stop_after, request)])
    # distill.* in the overrides (with distill.teacher): the distillation loss beside everything else.
    result = train(cfg, out_dir, with_distillation(method or probe, cfg, None), stop=request)
    rank = torch.distributed.get_rank()
    report = {"rank": rank, "world": torch.distributed.get_world_size(), "losses": probe.losses,
              "steps": result.steps, "digest": probe.digest, "masked_nonzero": probe.masked_nonzero,
              "masked_optimizer_nonzero": probe.masked_optimizer_nonzero,
              "inspected": probe.inspected, "masks": len(probe.masks or {}), "stopped": result.stopped,
              "distill": probe.distill}
    (report_dir / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
