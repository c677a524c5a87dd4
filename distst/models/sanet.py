"""SANet (Park & Lee, 2019): style-attentional modules at relu4_1 and relu5_1, a merge conv, the decoder.

Attribute names follow the reference so that its ``transformer_iter_*.pth`` files load strictly.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from .. import registry
from .decoder import REFERENCE_WIDTHS as DECODER_WIDTHS
from .identity import IdentitySection, IdentityTrainedModel
from .plan import Plan, require_equal
from .stats import blend, mean_variance_norm
from .stylecache import StyleCache
from .vgg import reference_plan


class SANetModule(nn.Module):
    """Attention from normalised content (f) to normalised style (g), values from the raw style (h).

    Queries/keys have ``key_channels``, values ``value_channels`` (both ``channels`` in the reference).
    """

    def __init__(self, channels: int, key_channels: int | None = None, value_channels: int | None = None) -> None:
        super().__init__()
        key_channels, value_channels = key_channels or channels, value_channels or channels
        self.f = nn.Conv2d(channels, key_channels, (1, 1))
        self.g = nn.Conv2d(channels, key_channels, (1, 1))
        self.h = nn.Conv2d(channels, value_channels, (1, 1))
        self.sm = nn.Softmax(dim=-1)
        self.out_conv = nn.Conv2d(value_channels, channels, (1, 1))

    def forward(self, content: Tensor, style: Tensor) -> Tensor:
        query = self.f(mean_variance_norm(content)).flatten(2).transpose(1, 2)  # N x HcWc x C
        key = self.g(mean_variance_norm(style)).flatten(2)  # N x C x HsWs
        value = self.h(style).flatten(2)  # N x C x HsWs
        attention = self.sm(torch.bmm(query, key))  # N x HcWc x HsWs
        n, _, h, w = content.shape
        out = torch.bmm(value, attention.transpose(1, 2)).view(n, -1, h, w)  # the value width, not the input's
        return self.out_conv(out) + content


class SANetTransform(nn.Module):
    def __init__(self, channels: int, widths: dict[str, int] | None = None) -> None:
        super().__init__()
        widths = widths or {}
        self.sanet4_1 = SANetModule(channels, widths.get("sanet4_1.key"), widths.get("sanet4_1.value"))
        self.sanet5_1 = SANetModule(channels, widths.get("sanet5_1.key"), widths.get("sanet5_1.value"))
        self.upsample5_1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.merge_conv_pad = nn.ReflectionPad2d((1, 1, 1, 1))
        self.merge_conv = nn.Conv2d(channels, channels, (3, 3))

    def forward(self, content4_1: Tensor, style4_1: Tensor, content5_1: Tensor, style5_1: Tensor) -> Tensor:
        merged = self.sanet4_1(content4_1, style4_1) + self.upsample5_1(self.sanet5_1(content5_1, style5_1))
        return self.merge_conv(self.merge_conv_pad(merged))


class SANetSection(IdentitySection):
    """``model.*`` for SANet: its reference loss weights (content 1, style 3, identity 50 and 1)."""

    name: Literal["sanet"] = "sanet"
    style_weight: float = Field(3.0, ge=0)


@registry.model(SANetSection, weight_keys=IdentityTrainedModel.WEIGHT_KEYS)
class SANet(IdentityTrainedModel):
    encoder_depth = "relu5_1"
    # The attention's key/value projections (1x1 convs) stay in the content graph: under a tenth of the style
    # side's MACs, and one definition of the attention (the model's own module).
    style_cache = StyleCache.of_taps(("relu4_1", "relu5_1"))
    input_multiple = 16  # relu5_1 is upsampled 2x onto relu4_1: both sides must halve exactly
    min_size = 32

    def __init__(self, cfg: SANetSection | None = None) -> None:
        super().__init__(cfg or SANetSection())

    def build_transform(self, plan: Plan) -> nn.Module:
        return SANetTransform(plan["encoder"]["conv4_1"], plan["transform"])

    @classmethod
    def reference_plan(cls) -> Plan:
        attention = {f"sanet{tap}.{kind}": 512 for tap in ("4_1", "5_1") for kind in ("key", "value")}
        return {"encoder": reference_plan(cls.encoder_depth), "transform": attention, "decoder": dict(DECODER_WIDTHS)}

    @classmethod
    def check_plan(cls, plan: Plan) -> None:
        require_equal(plan, ("encoder", "conv4_1"), ("encoder", "conv5_1"),
                      "SANet adds its relu4_1 and relu5_1 attention branches")

    def transform_features(self, content_enc: list[Tensor], style_enc: list[Tensor]) -> Tensor:
        return self.transform(content_enc[3], style_enc[3], content_enc[4], style_enc[4])

    def stylize_features(self, content_feats: list[Tensor], style_feats: list[Tensor], alpha: float) -> Tensor:
        return blend(self.transform_features(content_feats, style_feats), content_feats[3], alpha)
