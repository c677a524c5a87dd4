"""SANet (Park & Lee, 2019): style-attentional modules at relu4_1 and relu5_1, a merge conv, the decoder.

Attribute names follow the reference so that its ``transformer_iter_*.pth`` files load strictly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from .base import StyleTransferModel, StyleTransferSection
from .decoder import REFERENCE_WIDTHS as DECODER_WIDTHS
from .plan import Plan, require_equal
from .stats import blend, mean_variance_norm, per_sample_l2, style_error, style_loss
from .vgg import VGGEncoder, reference_plan


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


@dataclass
class _Pass:
    """Everything SANet's losses and errors are made of, for one batch of pairs."""

    out_feats: list[Tensor]
    content_feats: list[Tensor]
    style_feats: list[Tensor]
    identity_content: Tensor
    identity_style: Tensor
    identity_content_feats: list[Tensor]
    identity_style_feats: list[Tensor]


class SANetSection(StyleTransferSection):
    """``model.*`` for SANet: its reference loss weights (content 1, style 3, identity 50 and 1)."""

    name: Literal["sanet"] = "sanet"
    style_weight: float = Field(3.0, ge=0)
    identity1_weight: float = Field(50.0, ge=0, description="identity loss on images")
    identity2_weight: float = Field(1.0, ge=0, description="identity loss on features")


class SANet(StyleTransferModel):
    name = "sanet"
    section = SANetSection
    encoder_depth = "relu5_1"
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

    def _transform(self, content_feats: list[Tensor], style_feats: list[Tensor]) -> Tensor:
        return self.transform(content_feats[3], style_feats[3], content_feats[4], style_feats[4])

    def stylize_features(self, content_feats: list[Tensor], style_feats: list[Tensor], alpha: float) -> Tensor:
        return blend(self._transform(content_feats, style_feats), content_feats[3], alpha)

    def loss_weights(self) -> dict[str, float]:
        return {**super().loss_weights(),
                "identity1": self.cfg.identity1_weight, "identity2": self.cfg.identity2_weight}  # type: ignore[attr-defined]

    def _pass(self, content: Tensor, style: Tensor, loss_net: VGGEncoder) -> _Pass:
        self.check_input(content, style)
        content_enc, style_enc = self.encode(content, "content"), self.encode(style, "style")
        identity_content = self.decoder(self._transform(content_enc, content_enc))
        identity_style = self.decoder(self._transform(style_enc, style_enc))
        with torch.no_grad():
            content_feats, style_feats = loss_net(content), loss_net(style)
        transformed = self._transform(content_enc, style_enc)
        self.features.record("transform", transformed)
        output = self.decoder(transformed)
        self.features.record("output", output)
        return _Pass(
            out_feats=loss_net(output),
            content_feats=content_feats,
            style_feats=style_feats,
            identity_content=identity_content,
            identity_style=identity_style,
            identity_content_feats=loss_net(identity_content),
            identity_style_feats=loss_net(identity_style),
        )

    def loss_terms(self, content: Tensor, style: Tensor, loss_net: VGGEncoder) -> dict[str, Tensor]:
        p = self._pass(content, style, loss_net)
        mse = nn.functional.mse_loss
        content_loss = sum(mse(mean_variance_norm(p.out_feats[i]), mean_variance_norm(p.content_feats[i]))
                           for i in (3, 4))
        identity2 = sum(mse(a, b) for a, b in zip(p.identity_content_feats, p.content_feats, strict=True))
        identity2 = identity2 + sum(mse(a, b) for a, b in zip(p.identity_style_feats, p.style_feats, strict=True))
        return {
            "content": content_loss,
            "style": style_loss(p.out_feats, p.style_feats),
            "identity1": mse(p.identity_content, content) + mse(p.identity_style, style),
            "identity2": identity2,
        }

    def errors(self, content: Tensor, style: Tensor, loss_net: VGGEncoder) -> dict[str, Tensor]:
        p = self._pass(content, style, loss_net)
        content_error = sum(per_sample_l2(mean_variance_norm(p.out_feats[i]) - mean_variance_norm(p.content_feats[i]))
                            for i in (3, 4))
        identity = per_sample_l2(p.identity_content - content) + per_sample_l2(p.identity_style - style)
        for ours, refs in ((p.identity_content_feats, p.content_feats), (p.identity_style_feats, p.style_feats)):
            identity = identity + sum(per_sample_l2(a - b) for a, b in zip(ours, refs, strict=True))
        return {"content_error": content_error, "style_error": style_error(p.out_feats, p.style_feats),
                "identity_error": identity}
