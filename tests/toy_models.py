"""Small real users of the contracts, registered only in tests: a two-optimizer (GAN-shaped) model and a
method with its own config section. Not product models: the GAN issue brings CycleGAN."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from distst import registry
from distst.config import MethodSection, ModelSection, TrainConfig
from distst.models import DiststModel, Stage, register
from distst.models.plan import Plan


class ToyGANSection(ModelSection):
    groups: ClassVar[tuple[str, ...]] = ("generator", "discriminator")
    default_prune_scope: ClassVar[tuple[str, ...]] = ("generator",)

    name: Literal["toy_gan"] = "toy_gan"
    adversarial_weight: float = Field(1.0, ge=0)
    l1_weight: float = Field(10.0, ge=0)


class ToyGAN(DiststModel):
    """A 2-conv generator (content -> painting) and a 1-conv patch discriminator, least-squares losses.

    Stages: the generator steps first, then the discriminator on the generator's detached output.
    """

    name = "toy_gan"
    section = ToyGANSection

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


class GateL1Section(MethodSection):
    """A method section registered by a test: a per-channel gate with an L1 penalty."""

    method: Literal["gate_l1"] = "gate_l1"
    lam: float = Field(0.0, ge=0, description="L1 weight on the gate")
    layer: str = "decoder.1"


def register_toys() -> None:
    if "toy_gan" not in registry.MODEL_SECTIONS:
        register(ToyGAN)
    registry.register_method_section("gate_l1", GateL1Section)


def same_weights(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
