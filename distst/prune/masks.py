"""Unstructured weight masks over the named groups of a style-transfer model.

Masks are chosen by ``torch.nn.utils.prune`` (global or per-layer L1 magnitude, or random), then kept as
plain boolean tensors and applied in place. We do not leave ``prune``'s re-parametrisation on the model:
it renames ``weight`` to ``weight_orig`` + ``weight_mask``, which would break the reference state-dict
layout, DeepSpeed checkpoints and physical channel removal later. Instead, ``MaskedTraining`` masks
gradients (so Adam's moments of pruned weights stay zero) and re-applies masks after every step.

Under ZeRO-1/2 (and bf16/fp16) the optimizer updates fp32 master copies that ``module.weight`` does not
show, and its moments live in flat partitions; a mask that changes mid-run must reach those too, or the next
step copies the old values back. ``apply_to_optimizer`` masks them wherever DeepSpeed keeps them
(``distst.masters``: ZeRO-1/2 partitions, ZeRO-0 bf16 clones, or the weight itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from .. import masters
from ..models import DiststModel
from ..train.hooks import Method, TrainContext

PRUNABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
Masks = dict[str, Tensor]


def prunable_layers(model: DiststModel, scope: Iterable[str]) -> dict[str, nn.Module]:
    """Conv2d/ConvTranspose2d/Linear layers of the scoped groups, by qualified name (``decoder.1``)."""
    groups = model.groups()
    unknown = set(scope) - set(groups)
    if unknown:
        raise ValueError(f"unknown group(s) {sorted(unknown)} in prune.scope; the model has {', '.join(groups)}")
    return {f"{group}.{name}": module for group in groups if group in scope
            for name, module in groups[group].named_modules() if isinstance(module, PRUNABLE)}


def full_masks(model: DiststModel, scope: Iterable[str]) -> Masks:
    return {name: torch.ones_like(m.weight, dtype=torch.bool) for name, m in prunable_layers(model, scope).items()}


def remaining_target(total: int, rate: float, level: int) -> int:
    """Weights kept after ``level`` rounds of pruning ``rate`` of the remainder: round(total * (1-rate)^level)."""
    return int(round(total * (1.0 - rate) ** level))


def _with_masks(layers: Mapping[str, nn.Module], masks: Masks, choose: Any) -> Masks:
    """Attach ``masks`` through ``prune``, let ``choose()`` prune more, read the new masks, detach again."""
    for name, module in layers.items():
        prune.custom_from_mask(module, "weight", masks[name].to(module.weight.device))
    try:
        choose()
        return {name: module.weight_mask.bool().cpu().clone() for name, module in layers.items()}
    finally:
        for module in layers.values():
            prune.remove(module, "weight")  # back to a plain Parameter (same object), weight * mask baked in


def prune_magnitude(model: DiststModel, masks: Masks, rate: float, level: int, layerwise: bool) -> Masks:
    """Masks for ``level``: L1-magnitude pruning of the unmasked weights down to ``(1-rate)^level`` kept.

    Global (one ranking across every scoped layer, as the lottery-ticket papers) unless ``layerwise``.
    The counts are computed from the level, so sparsity is exactly 1-(1-rate)^level up to rounding.
    """
    layers = {name: module for name, module in prunable_layers(model, _scope_of(masks)).items()}
    if layerwise:
        def choose() -> None:
            for name, module in layers.items():
                keep = remaining_target(masks[name].numel(), rate, level)
                prune.l1_unstructured(module, "weight", amount=max(0, int(masks[name].sum()) - keep))
    else:
        total = sum(m.numel() for m in masks.values())
        amount = max(0, sum(int(m.sum()) for m in masks.values()) - remaining_target(total, rate, level))

        def choose() -> None:
            prune.global_unstructured([(m, "weight") for m in layers.values()], prune.L1Unstructured, amount=amount)
    return _with_masks(layers, masks, choose)


def random_subset(prior: Tensor, keep: int, generator: torch.Generator) -> Tensor:
    """The random-pruning control: ``keep`` positions chosen at random among those ``prior`` kept."""
    kept = prior.flatten().nonzero().squeeze(1)
    flat = torch.zeros(prior.numel(), dtype=torch.bool)
    flat[kept[torch.randperm(len(kept), generator=generator)[:keep]]] = True
    return flat.view_as(prior)


def _scope_of(masks: Masks) -> set[str]:
    return {name.split(".", 1)[0] for name in masks}


@torch.no_grad()
def apply_masks(model: DiststModel, masks: Masks) -> None:
    for name, module in prunable_layers(model, _scope_of(masks)).items():
        module.weight.mul_(masks[name].to(module.weight.device, module.weight.dtype))


def masked_state(state: Mapping[str, Tensor], masks: Masks) -> dict[str, Tensor]:
    """A copy of the state dict ``state`` with each masked layer's weight times its mask: a ticket's start."""
    out = dict(state)
    for name, mask in masks.items():
        out[f"{name}.weight"] = out[f"{name}.weight"] * mask
    return out


def mask_mismatch(masks: Masks, model: DiststModel) -> str | None:
    """The first mask that does not fit ``model`` (a layer it lacks, another weight shape, not boolean), as a phrase;
    None when every mask fits. Works on a model built on the meta device (only shapes are read)."""
    groups = model.groups()
    layers = prunable_layers(model, _scope_of(masks) & set(groups))
    for name, mask in masks.items():
        group = name.split(".", 1)[0]
        if group not in groups:
            return f"its mask covers group {group!r}, which {model.name} has not (its groups: {', '.join(groups)})"
        layer = layers.get(name)
        if layer is None:
            return f"its mask covers layer {name}, which this {model.name} has not"
        if tuple(mask.shape) != tuple(layer.weight.shape):
            return (f"its mask of {name}.weight has shape {tuple(mask.shape)}, this run's {name}.weight "
                    f"{tuple(layer.weight.shape)}")
        if mask.dtype != torch.bool:
            return f"its mask of {name} is {mask.dtype}, not a boolean mask"
    return None


@torch.no_grad()
def off_mask_nonzero(model: DiststModel, masks: Masks) -> int:
    """How many weights that ``masks`` prune are not zero in ``model``: 0 when masked training held."""
    layers = prunable_layers(model, _scope_of(masks))
    return sum(int(layers[name].weight[~mask.to(layers[name].weight.device)].count_nonzero())
               for name, mask in masks.items())


def sparsity_report(masks: Masks) -> dict[str, Any]:
    """Fraction of pruned weights overall, per group and per layer (of the prunable weights)."""
    def frac(items: list[Tensor]) -> float:
        total = sum(m.numel() for m in items)
        return 1.0 - sum(int(m.sum()) for m in items) / total if total else 0.0

    groups: dict[str, list[Tensor]] = {}
    for name, mask in masks.items():
        groups.setdefault(name.split(".", 1)[0], []).append(mask)
    return {
        "sparsity": frac(list(masks.values())),
        "prunable_weights": sum(m.numel() for m in masks.values()),
        "remaining_weights": sum(int(m.sum()) for m in masks.values()),
        "groups": {g: frac(items) for g, items in groups.items()},
        "layers": {name: frac([mask]) for name, mask in masks.items()},
    }


def _moments_linked(engines: Mapping[str, Any]) -> bool:
    """Whether DeepSpeed has linked its Adam moments to the parameters (it does so at the first step after
    initialising or loading); before that they cannot be read per parameter, and hold nothing stale."""
    return all(getattr(engine.optimizer, "_hp_optimizer_states_linked", True) for engine in engines.values())


def _engine_of(engines: Mapping[str, Any], param: nn.Parameter) -> Any | None:
    """The engine whose optimizer steps ``param`` (a GAN has one per optimizer stage); None outside DeepSpeed."""
    return next((engine for engine in engines.values() if any(p is param for p in engine.module.parameters())), None)


@torch.no_grad()
def apply_to_optimizer(engines: Mapping[str, Any], layers: Mapping[str, nn.Module], masks: Masks) -> tuple[int, bool]:
    """Mask the fp32 master weights and both Adam moments of every trainable masked layer, wherever the optimizer
    keeps them (``distst.masters``). Collective: every rank calls it.

    Returns how many masked tensors' masters were really reached (the caller checks it is all of them) and
    whether the moments were reached too (not before DeepSpeed links them at the first step).
    """
    reached = 0
    for name, mask in masks.items():
        param = layers[name].weight
        if param.requires_grad and masters.scale_master(_engine_of(engines, param), param, mask):
            reached += 1
    return reached, _moments_linked(engines)


class MaskedTraining(Method):
    """Keeps masked weights exactly zero: gradients masked in backward, masks applied to the weights after each
    step and, at the start and whenever they change (``update_masks``), to the optimizer's fp32 master weights
    and moments."""

    needs_full_parameters = True

    def __init__(self, masks: Masks) -> None:
        self.masks = masks
        self._hooks: list[Any] = []
        self._optimizer_stale = True

    def _layers(self, ctx: TrainContext) -> dict[str, nn.Module]:
        return prunable_layers(ctx.model, _scope_of(self.masks))

    def on_train_start(self, ctx: TrainContext) -> None:
        layers = self._layers(ctx)
        device = next(ctx.model.parameters()).device
        self.masks = {name: mask.to(device) for name, mask in self.masks.items()}
        for handle in self._hooks:
            handle.remove()
        # The mask is looked up at backward time, so an update takes effect at the next step.
        self._hooks = [layers[name].weight.register_hook(lambda grad, key=name: grad * self.masks[key])
                       for name in self.masks if layers[name].weight.requires_grad]
        self._apply(ctx)

    def update_masks(self, masks: Masks) -> None:
        """New (e.g. tightened) masks; they hold from the next optimizer step on."""
        device = next(iter(self.masks.values())).device if self.masks else "cpu"
        self.masks = {name: mask.to(device) for name, mask in masks.items()}
        self._optimizer_stale = True

    def _apply(self, ctx: TrainContext) -> None:
        apply_masks(ctx.model, self.masks)
        if self._optimizer_stale:
            layers = self._layers(ctx)
            reached, moments_too = apply_to_optimizer(ctx.engines, layers, self.masks)
            trainable = sum(1 for name in self.masks if layers[name].weight.requires_grad)
            if reached != trainable:
                raise RuntimeError(f"masks reached {reached} of {trainable} trainable masked tensors in the optimizer")
            self._optimizer_stale = not moments_too  # retried after the step that links them

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        self._apply(ctx)

    def on_evaluate(self, ctx: TrainContext, metrics: dict[str, float]) -> None:
        report = sparsity_report(self.masks)
        metrics["sparsity"] = report["sparsity"]
        metrics.update({f"sparsity/{g}": v for g, v in report["groups"].items()})

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {name: mask.cpu() for name, mask in self.masks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "masks" in state:
            self.masks = dict(state["masks"])
            self._optimizer_stale = True
