"""MCCNet (Deng et al., "Arbitrary Video Style Transfer via Multi-Channel Correlation", AAAI 2021).

One multi-channel correlation module on relu4_1 features, then the reference decoder. The module projects the
normalised content (``f``) and style (``g``) features, reduces the projected style G to one statistic per channel,
FC_S = sum(G^2) / sum(G) over positions, mixes it with a linear layer (``fc``), scales the projected content by it
channel by channel, and adds ``out_conv`` of that onto the content features.

The encoder runs to relu4_1, all the module reads (``identity.Relu41IdentityModel``).
Attribute names follow the reference, so its ``mcc_module_iter_*.pth`` loads strictly; that file also holds an
``h`` conv the reference builds but never calls: its weights are dropped when an official file is read, and the
conv is never built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from .. import registry
from ..video.stability import noise_stability
from .decoder import REFERENCE_WIDTHS as DECODER_WIDTHS
from .identity import IdentitySection, IdentityTrainedModel, Relu41IdentityModel
from .plan import Plan
from .stats import mean_variance_norm
from .stylecache import StyleCache
from .vgg import VGGEncoder, reference_plan

#: Keys of the official transform file that belong to the unused ``h`` conv.
UNUSED_REFERENCE_KEYS = ("MCCN.h.weight", "MCCN.h.bias")
#: The reference draws the noise's standard deviation uniformly from this range, once per batch.
NOISE_STD_RANGE = (0.01, 0.02)


def channel_statistic(projected_style: Tensor) -> Tensor:
    """FC_S: per sample and channel, the sum over positions of G^2 divided by the sum of G (N x K x ... -> N x K).

    No epsilon, as in the reference. As ``g`` reads mean-variance-normalised features (zero mean per channel),
    sum(G) is the number of positions times ``g``'s bias, so this is mean(G^2) / bias.
    """
    flat = projected_style.flatten(2)
    return flat.square().sum(-1) / flat.sum(-1)


class MCCModule(nn.Module):
    """The reference ``MCCNet`` module, without its unused ``h`` conv.

    ``f`` and ``g`` project to ``key_channels`` and ``style_channels`` (both ``channels`` in the reference);
    ``fc`` maps the style statistic to one weight per key channel; out_conv maps back to ``channels`` for the
    residual addition.
    """

    def __init__(self, channels: int, key_channels: int | None = None, style_channels: int | None = None) -> None:
        super().__init__()
        key_channels, style_channels = key_channels or channels, style_channels or channels
        self.f = nn.Conv2d(channels, key_channels, (1, 1))
        self.g = nn.Conv2d(channels, style_channels, (1, 1))
        self.out_conv = nn.Conv2d(key_channels, channels, (1, 1))
        self.fc = nn.Linear(style_channels, key_channels)

    def forward(self, content: Tensor, style: Tensor) -> Tensor:
        keys = self.f(mean_variance_norm(content))  # N x K x Hc x Wc
        weights = self.fc(channel_statistic(self.g(mean_variance_norm(style))))  # N x K
        # Shaped by -1, never the input's channel count, so pruned or slimmed widths flow through.
        return self.out_conv(keys * weights.view(weights.shape[0], -1, 1, 1)) + content


class MCCTransform(nn.Module):
    """The reference ``MCC_Module``: the module on relu4_1 features, under the attribute name ``MCCN``."""

    def __init__(self, channels: int, widths: Mapping[str, int] | None = None) -> None:
        super().__init__()
        widths = widths or {}
        self.MCCN = MCCModule(channels, widths.get("MCCN.f"), widths.get("MCCN.g"))

    def forward(self, content4_1: Tensor, style4_1: Tensor) -> Tensor:
        return self.MCCN(content4_1, style4_1)

    @staticmethod
    def reference_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """An official transform file's state without the unused ``h`` conv (every other key is checked strictly)."""
        return {k: v for k, v in state.items() if k not in UNUSED_REFERENCE_KEYS}


class MCCNetSection(IdentitySection):
    """``model.*`` for MCCNet: its reference loss weights."""

    name: Literal["mccnet"] = "mccnet"
    content_weight: float = Field(3.0, ge=0)
    style_weight: float = Field(10.0, ge=0)
    identity1_weight: float = Field(70.0, ge=0, description="identity loss on images")
    noise_weight: float = Field(3000.0, ge=0, description="output change under small Gaussian input noise")
    tv_weight: float = Field(1.0e-4, ge=0, description="total variation of the output (a sum, as the reference)")


@registry.model(MCCNetSection, weight_keys=IdentityTrainedModel.WEIGHT_KEYS)
class MCCNet(Relu41IdentityModel):
    # Its g conv, FC_S and fc are a small part of the style side; caching their output would split the module.
    style_cache = StyleCache.of_taps(("relu4_1",))

    def __init__(self, cfg: MCCNetSection | None = None) -> None:
        super().__init__(cfg or MCCNetSection())

    def build_transform(self, plan: Plan) -> nn.Module:
        return MCCTransform(plan["encoder"]["conv4_1"], plan["transform"])

    @classmethod
    def reference_plan(cls) -> Plan:
        # The widths of f (with fc's output and out_conv's input) and of g (with fc's input). No check_plan:
        # out_conv's output width is the encoder's conv4_1 width by construction, so every plan fits the residual
        # addition (pruning it prunes encoder conv4_1 and the decoder input with it).
        return {"encoder": reference_plan(cls.encoder_depth), "transform": {"MCCN.f": 512, "MCCN.g": 512},
                "decoder": dict(DECODER_WIDTHS)}

    def loss_weights(self) -> dict[str, float]:
        return {**super().loss_weights(), "noise": self.cfg.noise_weight,  # type: ignore[attr-defined]
                "tv": self.cfg.tv_weight}  # type: ignore[attr-defined]

    def loss_terms(self, content: Tensor, style: Tensor, loss_net: VGGEncoder) -> dict[str, Tensor]:
        """SANet's identity-trained terms plus noise stability and total variation. ``errors`` are SANet's three
        (no noise term: evaluation draws no random numbers), so E is comparable."""
        p = self.identity_pass(content, style, loss_net)
        style_enc = p.style_enc
        assert style_enc is not None  # identity_pass keeps the encoder's style features
        return {**self.identity_losses(p, content, style),
                "noise": noise_stability(lambda noisy: self.decoder(self.transform(self.encoder(noisy)[-1],
                                                                                   style_enc[-1])),
                                         content, p.output, NOISE_STD_RANGE),
                "tv": total_variation(p.output)}


def total_variation(images: Tensor) -> Tensor:
    """Sum of absolute differences of horizontal and vertical neighbours over the batch, as the reference (a sum,
    hence its small weight)."""
    return (images[..., :, 1:] - images[..., :, :-1]).abs().sum() + (images[..., 1:, :] - images[..., :-1, :]).abs().sum()
