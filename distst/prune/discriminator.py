"""What IMP does with a GAN's discriminator between levels (``prune.discriminator``; Chen et al., ICLR 2021).

The generator is pruned and rewound every level; the discriminator is
- ``reset``: dense, rewound with the generator (to its initialisation when ``prune.rewind_step=0``): the paper's
  default;
- ``finetune``: dense, carried over from the previous level's trained discriminator;
- ``prune``: pruned at the same rate and rewound with the generator (IMP_GD), ranked separately from it, so each
  group is exactly ``1 - (1-rate)^k`` sparse;
- ``distill``: reset, plus a knowledge-distillation loss pulling its scores towards the dense run's trained
  discriminator's on the same images (IMP_G^KD), through a ``Method``'s ``extra_losses``.

Only models with a ``discriminator`` group take the key; for the others it stays unset (and out of the config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config, ConfigError
from ..models.io import load_model
from ..train import Method, StepInputs, TrainContext

GROUP = "discriminator"
OPTIONS = ("reset", "finetune", "prune", "distill")


def resolve_option(prune: Any, cfg: Config) -> None:
    """Default, check and apply ``prune.discriminator`` (and ``prune.distill_weight``) against the model's groups
    and ``prune.scope``; called from the IMP section's ``resolve`` before the scope's own checks."""
    groups = type(cfg.model).groups
    if GROUP not in groups:
        if prune.discriminator is not None or prune.distill_weight is not None:
            raise ValueError(f"prune.discriminator / prune.distill_weight: {cfg.model.name} has no discriminator "
                             f"(its groups: {', '.join(groups)}); leave them out")
        return
    if prune.discriminator is None:
        prune.discriminator = "reset"
    if prune.distill_weight is not None and prune.discriminator != "distill":
        raise ValueError(f"prune.distill_weight is only used with prune.discriminator=distill "
                         f"(got {prune.discriminator})")
    if prune.discriminator == "distill" and prune.distill_weight is None:
        prune.distill_weight = 1.0
    pruned = prune.discriminator == "prune"
    if prune.scope is None:
        prune.scope = [*type(cfg.model).default_prune_scope, *([GROUP] if pruned else [])]
    if (GROUP in prune.scope) != pruned:
        raise ValueError(f"prune.scope={prune.scope} with prune.discriminator={prune.discriminator}: the discriminator "
                         "is in the scope exactly when prune.discriminator=prune")


def ranking_sets(cfg: Config) -> list[list[str]]:
    """Groups ranked together by global magnitude pruning: the whole scope, except that a pruned discriminator is
    ranked on its own (both it and the generator then reach the schedule's sparsity)."""
    scope = list(cfg.prune.scope)
    if getattr(cfg.prune, "discriminator", None) == "prune":
        return [[g for g in scope if g != GROUP], [GROUP]]
    return [scope]


def carry_over(cfg: Config, state: dict[str, Tensor], previous_level: Path) -> None:
    """``finetune``: the trained discriminator weights of the previous level (its directory) replace the rewound
    ones in ``state`` (its image pools are rewound with everything else)."""
    if getattr(cfg.prune, "discriminator", None) != "finetune":
        return
    previous, _ = load_model(previous_level / "model.pt")
    for name, param in previous.groups()[GROUP].named_parameters():
        state[f"{GROUP}.{name}"] = param.detach().clone()


def level_methods(cfg: Config, run_dir: Path) -> list[Method]:
    """What a level after the dense one trains with beside its masks: for ``distill``, the loss towards the dense
    level's trained discriminator (``run_dir/level_0``)."""
    if getattr(cfg.prune, "discriminator", None) != "distill":
        return []
    teacher, _ = load_model(run_dir / "level_0" / "model.pt")
    return [DiscriminatorDistillation(teacher.groups()[GROUP], cfg.prune.distill_weight)]


class DiscriminatorDistillation(Method):
    """IMP_G^KD: ``weight`` x the mean squared difference between the discriminator's scores and the dense run's
    trained discriminator's on the same images, added to the discriminator stage's loss.

    The model records each sub-discriminator's inputs and scores as ``discriminator.<name>/input`` and
    ``/output`` (CycleGAN's ``a`` and ``b``) when asked; the teacher runs on the recorded inputs.
    """

    def __init__(self, teacher: nn.Module, weight: float) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight = weight
        self.names = [name for name, child in teacher.named_children() if any(True for _ in child.parameters())]

    def feature_requests(self) -> set[str]:
        return {f"{GROUP}.{name}/{io}" for name in self.names for io in ("input", "output")}

    def on_train_start(self, ctx: TrainContext) -> None:
        missing = self.feature_requests() - set(ctx.model.feature_names)
        if missing:
            raise ConfigError(f"prune.discriminator=distill: {ctx.model.name} does not record "
                              f"{', '.join(sorted(missing))}, which the distillation loss needs")
        param = next(ctx.model.parameters())
        self.teacher.to(param.device, param.dtype)

    def extra_losses(self, ctx: TrainContext, inputs: StepInputs) -> dict[str, torch.Tensor]:
        terms = []
        for name in self.names:
            teacher = getattr(self.teacher, name)
            pairs = zip(inputs.features.get(f"{GROUP}.{name}/input", []),
                        inputs.features.get(f"{GROUP}.{name}/output", []), strict=True)
            terms += [F.mse_loss(scores, teacher(images.detach())) for images, scores in pairs]
        if not terms:  # a stage in which no discriminator scored anything it records (the generator's)
            return {}
        return {"distill": self.weight * torch.stack(terms).mean()}
