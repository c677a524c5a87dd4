"""Small real users of the contracts, registered only in tests (by their decorators, on import): a two-optimizer
(GAN-shaped) model and two one-run methods with their own config sections. Not product models: the GAN issue
brings CycleGAN. ``DISTST_PLUGINS=toy_models`` (with ``tests/`` on ``PYTHONPATH``) shows them to subprocesses and
Ray workers."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from distst import registry
from distst.config import Config, MethodSection, ModelSection, TrainConfig
from distst.models import AdaIN, DiststModel, Stage, StyleTransferModel, StyleTransferSection
from distst.models.plan import Plan
from distst.models.stats import adain
from distst.train import Method, StepInputs, TrainContext


class ToyGANSection(ModelSection):
    groups: ClassVar[tuple[str, ...]] = ("generator", "discriminator")
    default_prune_scope: ClassVar[tuple[str, ...]] = ("generator",)

    name: Literal["toy_gan"] = "toy_gan"
    adversarial_weight: float = Field(1.0, ge=0)
    l1_weight: float = Field(10.0, ge=0)


@registry.model(ToyGANSection)
class ToyGAN(DiststModel):
    """A 2-conv generator (content -> painting) and a 1-conv patch discriminator, least-squares losses.

    Stages: the generator steps first, then the discriminator on the generator's detached output.
    """

    def __init__(self, cfg: ToyGANSection | None = None) -> None:
        cfg = cfg or ToyGANSection()
        super().__init__(cfg)
        hidden = self.plan["generator"]["hidden"]
        self.generator = nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, 3, 3, padding=1),
                                       nn.Sigmoid())
        self.discriminator = nn.Sequential(nn.Conv2d(3, self.plan["discriminator"]["patch"], 4, stride=2),
                                           nn.LeakyReLU(0.2), nn.Conv2d(self.plan["discriminator"]["patch"], 1, 3))
        self._fake: Tensor | None = None

    @classmethod
    def reference_plan(cls) -> Plan:
        return {"generator": {"hidden": 8}, "discriminator": {"patch": 8}}

    def groups(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def stages(self, train: TrainConfig) -> list[Stage]:
        return [Stage("generator", ("generator",), lr=train.lr, betas=(0.5, 0.999)),
                Stage("discriminator", ("discriminator",), lr=train.lr, betas=(0.5, 0.999))]

    def forward(self, content: Tensor, style: Tensor | None = None) -> Tensor:
        out = self.generator(content)
        self.features.record("output", out)
        return out

    feature_names = ("output",)

    def stage_losses(self, stage: str, batch: tuple[Tensor, ...], loss_net: nn.Module | None) -> dict[str, Tensor]:
        content, style = batch
        if stage == "generator":
            self._fake = self(content)
            score = self.discriminator(self._fake)
            return {"adversarial": ((score - 1) ** 2).mean(), "l1": (self._fake - content).abs().mean()}
        assert self._fake is not None, "the generator stage runs first"
        real, fake = self.discriminator(style), self.discriminator(self._fake.detach())
        return {"d_real": ((real - 1) ** 2).mean(), "d_fake": (fake ** 2).mean()}

    def loss_weights(self) -> dict[str, float]:
        return {"adversarial": self.cfg.adversarial_weight, "l1": self.cfg.l1_weight,  # type: ignore[attr-defined]
                "d_real": 0.5, "d_fake": 0.5}

    def errors(self, content: Tensor, style: Tensor, loss_net: nn.Module | None) -> dict[str, Tensor]:
        fake = self(content)
        return {"color_error": (fake.mean(dim=(2, 3)) - style.mean(dim=(2, 3))).norm(dim=1)}


class ToyMixSection(StyleTransferSection):
    """``model.*`` of a test-only style-transfer model (AdaIN's losses and plan, a learnt 1x1 mix after AdaIN)."""

    name: Literal["toy_mix"] = "toy_mix"


class MixTransform(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mix = nn.Conv2d(channels, channels, 1)
        with torch.no_grad():  # starts as plain AdaIN
            self.mix.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
            self.mix.bias.zero_()

    def forward(self, content_feat: Tensor, style_feat: Tensor) -> Tensor:
        return self.mix(adain(content_feat, style_feat))


# The whole of "adding a model" (docs/architecture.md): a section, a class, one decorator; nothing else changes.
@registry.model(ToyMixSection, weight_keys=StyleTransferModel.WEIGHT_KEYS)
class ToyMix(AdaIN):
    style_cache = None  # AdaIN's cached statistics would skip the mix: export caches every tap instead
    def build_transform(self, plan: Plan) -> nn.Module:
        return MixTransform(plan["encoder"]["conv4_1"])


class ChannelGate(Method):
    """A per-channel gate after one conv, added before DeepSpeed starts, with an L1 penalty; folded into the
    conv at the end so ``model.pt`` keeps the reference layout."""

    def __init__(self, lam: float, layer: str = "decoder.1") -> None:
        self.lam, self.layer = lam, layer

    def _conv(self, model: nn.Module) -> nn.Conv2d:
        return dict(model.named_modules())[self.layer]

    def prepare_model(self, model: DiststModel, cfg: Config) -> None:
        conv = self._conv(model)
        conv.register_parameter("gate", nn.Parameter(torch.ones(conv.out_channels)))
        self._hook = conv.register_forward_hook(lambda m, _i, out: out * m.gate.view(1, -1, 1, 1))

    def extra_losses(self, ctx: TrainContext, inputs: StepInputs) -> dict[str, Tensor]:
        return {"gate_l1": self.lam * self._conv(ctx.model).gate.abs().sum()}

    def on_evaluate(self, ctx: TrainContext, metrics: dict[str, float]) -> None:
        metrics["gate_mean"] = float(self._conv(ctx.model).gate.detach().mean())

    def on_train_end(self, ctx: TrainContext) -> None:
        conv = self._conv(ctx.model)
        self.final_gate = conv.gate.detach().clone()
        with torch.no_grad():
            conv.weight.mul_(conv.gate.view(-1, 1, 1, 1))
            conv.bias.mul_(conv.gate)
        del conv.gate
        self._hook.remove()


def gate_from_config(cfg: Config) -> ChannelGate:
    return ChannelGate(cfg.prune.lam, cfg.prune.layer)  # type: ignore[attr-defined]


# Folding the gate edits a weight in place: a method that needs whole parameters (no ZeRO-3).
@registry.method(factory=gate_from_config, needs_full_parameters=True)
class GateL1Section(MethodSection):
    """A one-run method registered by a test: a per-channel gate with an L1 penalty."""

    method: Literal["gate_l1"] = "gate_l1"
    lam: float = Field(0.0, ge=0, description="L1 weight on the gate")
    layer: str = "decoder.1"


class OutputL1(Method):
    """A loss on a recorded feature only: it never touches a parameter, so ZeRO-3 can run it."""

    def __init__(self, lam: float) -> None:
        self.lam = lam

    def feature_requests(self) -> set[str]:
        return {"output"}

    def extra_losses(self, ctx: TrainContext, inputs: StepInputs) -> dict[str, Tensor]:
        outputs = inputs.features.get("output", [])  # none in a GAN's discriminator stage
        return {"output_l1": self.lam * sum(f.abs().mean() for f in outputs)} if outputs else {}


def output_l1_from_config(cfg: Config) -> OutputL1:
    return OutputL1(cfg.prune.lam)  # type: ignore[attr-defined]


@registry.method(factory=output_l1_from_config)
class OutputL1Section(MethodSection):
    """A one-run method that needs no whole parameters (``needs_full_parameters`` left False)."""

    method: Literal["output_l1"] = "output_l1"
    lam: float = Field(0.01, ge=0, description="weight of the L1 on the model's output")


def same_weights(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
