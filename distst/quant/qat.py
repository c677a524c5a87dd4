"""Quantisation-aware fine-tuning (``prune.method=qat``): train with int8 fake quantisation of every conv and
linear weight (per output channel) and every conv input (per tensor), so that the ONNX Runtime int8 graph of
the result (``distst export --int8``) loses less than post-training quantisation of the fp32 model does.

Added in ``prepare_model`` (before DeepSpeed: the parametrized weights are what the optimizer steps), the
observers' running ranges checkpointed with the method state and restored on resume, and everything removed
in ``on_train_end``: ``model.pt`` holds plain weights on their int8 grid, in the reference layout (and the plan
of ``model.init_from``, e.g. a slimmed model).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from .. import registry
from ..config import Config, MethodSection
from ..models import DiststModel
from ..train import Method, TrainContext
from .fake import ActivationObserver, FakeQuantWeight

_OBSERVER = "input_observer"  # the observer's attribute name on a quantised conv


def build_method(cfg: Config) -> Method:
    """What ``distst train`` runs for ``prune.method=qat`` (the record's factory)."""
    assert isinstance(cfg.prune, QatSection)
    return QuantAwareTraining(cfg.prune)


# The shipped int8 graph quantises the encoder too: let it adapt (the losses use a separate frozen VGG). It is
# judged by its own run's E, never by a set metric (a GAN's FID), so it needs no Inception weights.
# Parametrizations wrap whole weights: ZeRO-3's partitioned parameters cannot be.
@registry.method(factory=build_method, needs_full_parameters=True, trains_encoder=True)
class QatSection(MethodSection):
    """``prune.*`` for quantisation-aware fine-tuning."""

    method: Literal["qat"] = "qat"
    scope: list[str] | None = Field(None, description="groups to fake-quantise; default: the model's (style "
                                                      "transfer: encoder, transform, decoder)")
    activations: bool = Field(True, description="also fake-quantise every conv's input (uint8 per tensor)")
    observer_momentum: float = Field(0.01, gt=0, le=1, description="EMA weight of a batch's min/max")
    freeze_observers_step: int | None = Field(None, ge=0, description="stop updating activation ranges at this "
                                                                      "step (default: never)")

    def resolve(self, cfg: Config) -> None:
        groups = type(cfg.model).groups
        if self.scope is None:
            self.scope = list(type(cfg.model).default_prune_scope)
        if not self.scope:
            raise ValueError(f"prune.scope is empty; choose from {', '.join(groups)}")
        unknown = [g for g in self.scope if g not in groups]
        if unknown:
            raise ValueError(f"prune.scope: {cfg.model.name} has no group(s) {', '.join(map(repr, unknown))}; "
                             f"its groups: {', '.join(groups)}")



def quantised_layers(model: DiststModel, scope: list[str]) -> dict[str, nn.Module]:
    """Convs and linear layers of the groups in ``scope``, by qualified name in the model."""
    names = {id(m): n for n, m in model.named_modules()}
    groups = model.groups()
    return {names[id(m)]: m for g in scope for m in groups[g].modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def _observe_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    observer = getattr(module, _OBSERVER)
    observer.train(module.training)  # not a submodule: model.eval() reaches the conv, and through it the observer
    return (observer(args[0]), *args[1:])


class QuantAwareTraining(Method):
    """Fake-quant weights (parametrizations) and conv inputs (observer pre-hooks) while training."""

    def __init__(self, section: QatSection) -> None:
        self.section = section
        self.layers: dict[str, nn.Module] = {}
        self._hooks: list[Any] = []
        self._pending: dict[str, Any] = {}

    def prepare_model(self, model: DiststModel, cfg: Config) -> None:
        self.layers = quantised_layers(model, self.section.scope or list(model.groups()))
        for module in self.layers.values():
            parametrize.register_parametrization(module, "weight", FakeQuantWeight())
            if self.section.activations and isinstance(module, nn.Conv2d):
                # Not a submodule: the observer must stay out of the model's state dict and of DeepSpeed's.
                object.__setattr__(module, _OBSERVER, ActivationObserver(self.section.observer_momentum))
                self._hooks.append(module.register_forward_pre_hook(_observe_input))

    def observers(self) -> dict[str, ActivationObserver]:
        return {name: getattr(m, _OBSERVER) for name, m in self.layers.items() if hasattr(m, _OBSERVER)}

    def on_train_start(self, ctx: TrainContext) -> None:
        for name, observer in self.observers().items():
            observer.to(ctx.dist.device)
            if name in self._pending:
                observer.load(self._pending[name])
        self._pending = {}
        self._freeze_if_due(ctx.step)

    def _freeze_if_due(self, step: int) -> None:
        at = self.section.freeze_observers_step
        for observer in self.observers().values():
            observer.frozen = at is not None and step >= at

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        self._freeze_if_due(ctx.step)

    def on_evaluate(self, ctx: TrainContext, metrics: dict[str, float]) -> None:
        ranges = [float(o.high - o.low) for o in self.observers().values() if int(o.seen)]
        if ranges:
            metrics["qat/mean_input_range"] = sum(ranges) / len(ranges)

    @torch.no_grad()
    def on_train_end(self, ctx: TrainContext) -> None:
        """Weights left on their int8 grid as plain parameters (the reference layout); observers and hooks go.
        The loop has put the fp32 masters into the model first, so the grid is the fp32 weights' (in bf16 the
        module's own weights are rounded, and the fold of those lands off the grid)."""
        for module in self.layers.values():
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            if hasattr(module, _OBSERVER):
                object.__delattr__(module, _OBSERVER)
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def state_dict(self) -> dict[str, Any]:
        return {"observers": {name: {k: v.cpu() for k, v in o.state().items()} for name, o in self.observers().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Restored in on_train_start, once the observers are on the run's device.
        self._pending = dict(state.get("observers", {}))

