"""The protocol between the one training loop and a compression method.

The loop calls these hooks and knows nothing else of the method: lottery-ticket masks, slimming
regularisers or quantisation-aware training all plug in here. Every hook has a do-nothing default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..models import StyleTransferModel
from .engine import DistInfo


@dataclass
class TrainContext:
    """What a hook may look at: the job, the model being trained, and where the loop stands."""

    cfg: Config
    model: StyleTransferModel
    workdir: Path
    dist: DistInfo
    step: int = 0
    engine: Any = None
    loss_net: torch.nn.Module | None = None  # the frozen loss VGG
    #: The last optimizer step's loss terms on this rank (``loss`` and each named term).
    metrics: dict[str, float] = field(default_factory=dict)


class Method:
    """Base class of compression methods. Override what the method needs."""

    #: Methods that edit weights in place (masks) cannot run under ZeRO-3, whose parameters are partitioned.
    needs_full_parameters: bool = False

    def on_train_start(self, ctx: TrainContext) -> None:
        """After the model is built and any checkpoint is restored, before the first step."""

    def extra_losses(self, ctx: TrainContext) -> dict[str, torch.Tensor]:
        """Regularisers added to the training loss (already weighted), by name for logging."""
        return {}

    def before_optimizer_step(self, ctx: TrainContext) -> None:
        """After backward, before the optimizer step."""

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        """After every optimizer step (e.g. re-apply masks); ``ctx.step`` counts finished steps."""

    def on_evaluate(self, ctx: TrainContext, metrics: dict[str, float]) -> None:
        """After an evaluation; may add entries to ``metrics`` (e.g. sparsity)."""

    def state_dict(self) -> dict[str, Any]:
        """Method state saved with every checkpoint (tensors and plain data only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


class MethodList(Method):
    """Several methods applied together, in order."""

    def __init__(self, methods: list[Method]) -> None:
        self.methods = methods
        self.needs_full_parameters = any(m.needs_full_parameters for m in methods)

    def on_train_start(self, ctx: TrainContext) -> None:
        for m in self.methods:
            m.on_train_start(ctx)

    def extra_losses(self, ctx: TrainContext) -> dict[str, torch.Tensor]:
        return {k: v for m in self.methods for k, v in m.extra_losses(ctx).items()}

    def before_optimizer_step(self, ctx: TrainContext) -> None:
        for m in self.methods:
            m.before_optimizer_step(ctx)

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        for m in self.methods:
            m.after_optimizer_step(ctx)

    def on_evaluate(self, ctx: TrainContext, metrics: dict[str, float]) -> None:
        for m in self.methods:
            m.on_evaluate(ctx, metrics)

    def state_dict(self) -> dict[str, Any]:
        return {str(i): m.state_dict() for i, m in enumerate(self.methods)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, m in enumerate(self.methods):
            m.load_state_dict(state.get(str(i), {}))
