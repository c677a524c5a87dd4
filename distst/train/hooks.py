"""The protocol between the one training loop and a compression method.

The loop calls these hooks and knows nothing else of the method: lottery-ticket masks, slimming scales and
their regularisers, feature losses or quantisation-aware training all plug in here. In the order the loop
calls them:

1. ``prepare_model`` before DeepSpeed is initialised: add parameters or modules (scales, fake-quant, gates);
   they are then optimised, checkpointed and restored like the model's own.
2. ``on_train_start`` after any checkpoint is restored.
3. per micro-batch and optimizer stage: ``extra_losses`` with the batch and the features the model recorded
   in that forward pass (the names from ``feature_requests``);
4. at the accumulation boundary: ``edit_gradients`` with full gradients that hold under ZeRO 0-2;
5. ``after_optimizer_step``; ``on_evaluate`` adds the method's metrics; ``on_train_end`` before the model
   file is written (fold scales, remove gates).
Every hook has a do-nothing default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..models import DiststModel
from .checkpoint import CheckpointError
from .engine import DistInfo


@dataclass
class TrainContext:
    """What a hook may look at: the job, the model being trained, and where the loop stands."""

    cfg: Config
    model: DiststModel
    workdir: Path
    dist: DistInfo
    step: int = 0
    #: The DeepSpeed engine of each optimizer stage, by stage name (``main`` for style transfer).
    engines: dict[str, Any] = field(default_factory=dict)
    loss_net: nn.Module | None = None
    #: The last optimizer step's loss terms on this rank (``loss`` and each named term).
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def engine(self) -> Any:
        """The engine of a single-stage model."""
        if len(self.engines) != 1:
            raise AttributeError(f"the model has stages {list(self.engines)}: use ctx.engines[name]")
        return next(iter(self.engines.values()))


@dataclass
class StepInputs:
    """One micro-batch of one optimizer stage, as an extra loss sees it."""

    stage: str
    batch: tuple[torch.Tensor, ...]
    #: Named features the model recorded in this forward pass (each a list: a module may run more than once).
    features: dict[str, list[torch.Tensor]]


class GradientAccess:
    """Full gradients of the parameters one engine steps, read and written through DeepSpeed's API.

    Under ZeRO-1/2 ``engine.backward`` reduces gradients into partitioned buffers and frees ``param.grad``,
    so editing ``param.grad`` would do nothing; ``safe_get_full_grad``/``safe_set_full_grad`` reach the
    buffers the optimizer will read. Both are collective: every rank must make the same calls.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def get(self, param: nn.Parameter) -> torch.Tensor | None:
        from deepspeed.utils import safe_get_full_grad

        return safe_get_full_grad(param)

    def set(self, param: nn.Parameter, value: torch.Tensor) -> None:
        from deepspeed.utils import safe_set_full_grad

        safe_set_full_grad(param, value)


class Method:
    """Base class of compression methods. Override what the method needs.

    ``name`` (the class name unless a subclass or the caller sets another) keys the method's state in a
    checkpoint when it runs in a ``MethodList``: two methods of one list need different names.
    """

    #: Methods that edit weights in place (masks) cannot run under ZeRO-3, whose parameters are partitioned.
    needs_full_parameters: bool = False

    @property
    def name(self) -> str:
        return self.__dict__.get("_name") or type(self).__name__

    @name.setter
    def name(self, value: str) -> None:
        self.__dict__["_name"] = value

    def prepare_model(self, model: DiststModel, cfg: Config) -> None:
        """Before DeepSpeed is initialised: add parameters or modules the optimizer must see."""

    def feature_requests(self) -> set[str]:
        """Names of features ``extra_losses`` needs (``model.feature_names`` or ``module:<name>``)."""
        return set()

    def on_train_start(self, ctx: TrainContext) -> None:
        """After the model is built and any checkpoint is restored, before the first step."""

    def extra_losses(self, ctx: TrainContext, inputs: StepInputs) -> dict[str, torch.Tensor]:
        """Regularisers added to the stage's loss (already weighted), by name for logging."""
        return {}

    def edit_gradients(self, ctx: TrainContext, stage: str, grads: GradientAccess) -> None:
        """After backward at an accumulation boundary, before the stage's optimizer step."""

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        """After every optimizer step (e.g. re-apply masks); ``ctx.step`` counts finished steps."""

    def on_evaluate(self, ctx: TrainContext, metrics: dict[str, float]) -> None:
        """After an evaluation; may add the method's own metrics to ``metrics`` (e.g. sparsity)."""

    def on_train_end(self, ctx: TrainContext) -> None:
        """After the final evaluation, before ``model.pt`` is written: fold, remove or export what was added."""

    def state_dict(self) -> dict[str, Any]:
        """Method state saved with every checkpoint (tensors and plain data only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


class MethodList(Method):
    """Several methods applied together, in order; their state is checkpointed by name (nested lists' methods
    too, in one flat table), so the order and the nesting may change between a save and a resume, not the names."""

    def __init__(self, methods: list[Method]) -> None:
        self.methods = methods
        self._leaves()  # refuses two methods of one name: their states would share one key in the checkpoint
        self.needs_full_parameters = any(m.needs_full_parameters for m in methods)

    def prepare_model(self, model: DiststModel, cfg: Config) -> None:
        for m in self.methods:
            m.prepare_model(model, cfg)

    def feature_requests(self) -> set[str]:
        return set().union(*(m.feature_requests() for m in self.methods))

    def on_train_start(self, ctx: TrainContext) -> None:
        for m in self.methods:
            m.on_train_start(ctx)

    def extra_losses(self, ctx: TrainContext, inputs: StepInputs) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        owner: dict[str, str] = {}
        for m in self.methods:
            for key, value in m.extra_losses(ctx, inputs).items():
                if key in losses:  # one would silently replace the other in the loss and the log
                    raise ValueError(f"methods {owner[key]} and {m.name} both return an extra loss named {key!r}; "
                                     "rename one")
                losses[key], owner[key] = value, m.name
        return losses

    def edit_gradients(self, ctx: TrainContext, stage: str, grads: GradientAccess) -> None:
        for m in self.methods:
            m.edit_gradients(ctx, stage, grads)

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        for m in self.methods:
            m.after_optimizer_step(ctx)

    def on_evaluate(self, ctx: TrainContext, metrics: dict[str, float]) -> None:
        for m in self.methods:
            m.on_evaluate(ctx, metrics)

    def on_train_end(self, ctx: TrainContext) -> None:
        for m in self.methods:
            m.on_train_end(ctx)

    def _leaves(self) -> dict[str, Method]:
        """Every method of the list and of the lists inside it, by name."""
        leaves: dict[str, Method] = {}
        for m in self.methods:
            for name, leaf in (m._leaves().items() if isinstance(m, MethodList) else ((m.name, m),)):
                if name in leaves:
                    raise ValueError(f"MethodList: two methods are named {name}; give each its own name "
                                     "(method.name = ...)")
                leaves[name] = leaf
        return leaves

    def state_dict(self) -> dict[str, Any]:
        return {name: m.state_dict() for name, m in self._leaves().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and all(k.isdigit() for k in state) and len(state) == len(self.methods):  # saved by position
            for i, m in enumerate(self.methods):
                m.load_state_dict(state[str(i)])
            return
        ours = self._leaves()
        # A method with state on one side only would silently start over (or drop what was saved): refuse.
        lost = sorted(k for k, v in state.items() if v and k not in ours)
        missing = sorted(k for k, m in ours.items() if k not in state and m.state_dict())
        if lost or missing:
            raise CheckpointError(
                f"the checkpoint holds the state of methods {sorted(state)}, this run's are {sorted(ours)}"
                + (f"; no method here for {', '.join(lost)}" if lost else "")
                + (f"; nothing saved for {', '.join(missing)}" if missing else "")
                + ": resume with the methods (names) that saved it, or move the run directory away")
        for key, m in ours.items():
            m.load_state_dict(state.get(key, {}))
