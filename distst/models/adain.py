"""AdaIN (Huang & Belongie, 2017): VGG relu4_1 features, adaptive instance norm, the reference decoder."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .. import registry
from .base import StyleTransferModel, StyleTransferSection
from .decoder import REFERENCE_WIDTHS as DECODER_WIDTHS
from .plan import Plan
from .stats import adain, blend, per_sample_l2, style_error, style_loss
from .stylecache import StyleCache
from .vgg import VGGEncoder, reference_plan


class AdaINTransform(nn.Module):
    """Parameter-free: re-normalises content features to the style's channel statistics."""

    def forward(self, content_feat: Tensor, style_feat: Tensor) -> Tensor:
        return adain(content_feat, style_feat)


class AdaINSection(StyleTransferSection):
    """``model.*`` for AdaIN: the reference loss weights (content 1, style 10)."""

    name: Literal["adain"] = "adain"


@registry.model(AdaINSection, weight_keys=StyleTransferModel.WEIGHT_KEYS)
class AdaIN(StyleTransferModel):
    encoder_depth = "relu4_1"
    # The per-channel mean and std of the style's relu4_1 features (2 x C numbers, independent of the style
    # image's size): the transform needs nothing else.
    style_cache = StyleCache(("style_mean", "style_std"), ("relu4_1",), stats=True)

    def __init__(self, cfg: AdaINSection | None = None) -> None:
        super().__init__(cfg or AdaINSection())

    def build_transform(self, plan: Plan) -> nn.Module:
        return AdaINTransform()

    @classmethod
    def reference_plan(cls) -> Plan:
        return {"encoder": reference_plan(cls.encoder_depth), "decoder": dict(DECODER_WIDTHS)}

    def stylize_features(self, content_feats: list[Tensor], style_feats: list[Tensor], alpha: float) -> Tensor:
        return blend(self.transform(content_feats[-1], style_feats[-1]), content_feats[-1], alpha)

    def _targets(self, content: Tensor, style: Tensor, loss_net: nn.Module) -> tuple[list[Tensor], Tensor]:
        """Style features and the content target t = AdaIN(F_c, F_s), both from the frozen loss VGG."""
        with torch.no_grad():
            style_feats = loss_net(style)
            target = adain(loss_net(content)[-1], style_feats[-1])
        return style_feats, target

    def loss_terms(self, content: Tensor, style: Tensor, loss_net: VGGEncoder) -> dict[str, Tensor]:
        style_feats, target = self._targets(content, style, loss_net)
        out_feats = loss_net(self(content, style))
        return {"content": nn.functional.mse_loss(out_feats[-1], target),
                "style": style_loss(out_feats, style_feats)}

    def errors(self, content: Tensor, style: Tensor, loss_net: VGGEncoder) -> dict[str, Tensor]:
        style_feats, target = self._targets(content, style, loss_net)
        out_feats = loss_net(self(content, style))
        return {"content_error": per_sample_l2(out_feats[-1] - target),
                "style_error": style_error(out_feats, style_feats)}

