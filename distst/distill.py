"""Distillation from the dense teacher: a ``Method`` any training step can add (``distill.*``).

The teacher (a model file: the run's own dense step by default) runs frozen beside the student on the same
micro-batch. Its forward pass is the student's own: ``stage_losses`` of the same stage, under ``no_grad``, so
every feature both record (the output image; SANet's identity passes record it again) lines up one to one;
the teacher's loss terms are computed and dropped, the price of needing nothing per model. The loss is the
MSE of the output images (``distill.weight``) plus, for each of ``distill.features``, the MSE of the features
(``distill.feature_weight``) through a 1x1 adapter where the student has fewer channels than the teacher.

The adapters are ours: added to the model before DeepSpeed (so they are trained and checkpointed with it) and
removed at the end, so the model file keeps the student's plain layout. The teacher is not part of the model:
never in an optimizer, a state dict, a mask or a checkpoint; a resumed run loads it again from its file.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Config, ConfigError, DistillConfig
from .models import DiststModel
from .models.io import load_model
from .train.hooks import Method, MethodList, StepInputs, TrainContext

OUTPUT = "output"
ADAPTERS = "distill_adapters"  # the model's attribute that holds them while training


def _adapter_key(feature: str) -> str:
    return feature.replace(".", "_").replace("/", "__").replace(":", "_")


def _channels(model: DiststModel, features: list[str]) -> dict[str, int]:
    """Channels of each feature in one probe forward (a model without a probe: none known)."""
    if not features or not model.supports_channel_pruning():
        return {}
    size = max(32, -(-model.min_size // max(1, model.input_multiple)) * max(1, model.input_multiple))
    model.features.want(features, model)
    with torch.random.fork_rng(), torch.no_grad():  # the probe's random inputs leave the training RNG alone
        torch.manual_seed(0)
        model.coupling_forward(size)
    recorded = model.features.take()
    model.features.want((), model)
    return {name: int(values[0].shape[1]) for name, values in recorded.items() if values}


class Distillation(Method):
    """The loss towards a frozen teacher's output (and features) on the same batch."""

    def __init__(self, teacher: DiststModel, settings: DistillConfig, source: str = "the teacher") -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight, self.feature_weight = settings.weight, settings.feature_weight
        self.features = list(settings.features)
        self.source = source
        self.name = "distill"

    def prepare_model(self, model: DiststModel, cfg: Config) -> None:
        if self.teacher.name != model.name:
            raise ConfigError(f"distill.teacher: {self.source} holds a {self.teacher.name} model, but the run trains "
                              f"{model.name}")
        unknown = [f for f in self.features if f != OUTPUT and f not in model.feature_names
                   and not f.startswith("module:")]
        if unknown:
            raise ConfigError(f"distill.features: {model.name} records no {', '.join(unknown)}; it records "
                              f"{', '.join(model.feature_names)} (or module:<name>)")
        student, teacher = _channels(model, self.features), _channels(self.teacher, self.features)
        wider = {f: (student[f], teacher[f]) for f in student if f in teacher and student[f] != teacher[f]}
        if wider:
            generator = torch.Generator().manual_seed(cfg.train.seed)  # the training RNG stream stays untouched
            adapters = nn.ModuleDict()
            for feature, (ins, outs) in wider.items():
                with torch.random.fork_rng():  # nn.Conv2d initialises itself from the global RNG
                    conv = nn.Conv2d(ins, outs, 1)
                bound = 1 / math.sqrt(ins)
                with torch.no_grad():
                    conv.weight.uniform_(-bound, bound, generator=generator)
                    conv.bias.zero_()
                adapters[_adapter_key(feature)] = conv
            model.add_module(ADAPTERS, adapters)

    def feature_requests(self) -> set[str]:
        return {OUTPUT, *self.features}

    def on_train_start(self, ctx: TrainContext) -> None:
        param = next(ctx.model.parameters())
        self.teacher.to(param.device, param.dtype)
        self.teacher.features.want(self.feature_requests(), self.teacher)

    def _adapt(self, model: DiststModel, feature: str, value: Tensor) -> Tensor:
        adapters = getattr(model, ADAPTERS, None)
        key = _adapter_key(feature)
        return adapters[key](value) if adapters is not None and key in adapters else value

    def extra_losses(self, ctx: TrainContext, inputs: StepInputs) -> dict[str, Tensor]:
        outputs = inputs.features.get(OUTPUT, [])
        if not outputs or not outputs[0].requires_grad:
            return {}  # a stage that does not train what makes the output (a GAN's discriminator step)
        with torch.no_grad():
            self.teacher.stage_losses(inputs.stage, inputs.batch, ctx.loss_net)
        taught = self.teacher.features.take()
        losses: dict[str, Tensor] = {}
        if self.weight > 0:
            losses["distill"] = self.weight * self._mse(outputs, taught.get(OUTPUT, []), OUTPUT)
        for feature in self.features:
            student = [self._adapt(ctx.model, feature, v) for v in inputs.features.get(feature, [])]
            losses[f"distill/{feature}"] = self.feature_weight * self._mse(student, taught.get(feature, []), feature)
        return losses

    @staticmethod
    def _mse(student: list[Tensor], teacher: list[Tensor], feature: str) -> Tensor:
        if len(student) != len(teacher) or not student:
            raise ConfigError(f"distill: the student recorded {feature} {len(student)} times in this pass, the "
                              f"teacher {len(teacher)} times")
        for s, t in zip(student, teacher, strict=True):
            if s.shape != t.shape:
                raise ConfigError(f"distill.features: {feature} is {tuple(s.shape)} in the student and "
                                  f"{tuple(t.shape)} in the teacher, and no adapter maps one to the other")
        return torch.stack([F.mse_loss(s.float(), t.float()) for s, t in zip(student, teacher, strict=True)]).mean()

    def on_train_end(self, ctx: TrainContext) -> None:
        if hasattr(ctx.model, ADAPTERS):
            delattr(ctx.model, ADAPTERS)  # the model file keeps the student's own layout


def with_distillation(method: Method | None, cfg: Config, teacher: str | Path | None) -> Method | None:
    """``method`` with the distillation loss beside it when ``distill.*`` turns it on; ``teacher`` is the model
    file to distil from when the job names none (the run's own dense step)."""
    if not cfg.distill.enabled:
        return method
    source = cfg.distill.teacher or teacher
    if source is None:
        raise ConfigError("distill.weight / distill.features: this run has no dense step of its own to learn "
                          "from: name a model file with distill.teacher")
    model, _ = load_model(source)
    distill = Distillation(model, cfg.distill, str(source))
    return distill if method is None else MethodList([method, distill])

