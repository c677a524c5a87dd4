"""MANet (Deng et al., "Arbitrary Style Transfer via Multi-Adaptation Network", ACM MM 2020).

The Multi-Adaptation Module on relu4_1 features, then AdaIN's reference decoder: position-wise self-attention on
the content (CSA), channel-wise self-attention on the style (SSA), and co-adaptation (CA), an attention from the
adapted content to the adapted style: Fcs = CA(CSA(Fc), SSA(Fs)). CSA and CA are SANet's attention module (queries
and keys from normalised features, values from raw ones, a residual); SSA attends over channels, with queries and
keys from the raw style and values from the normalised one, as the reference code writes it.

The encoder runs to relu4_1, all the module reads; only the frozen loss VGG goes on to relu5_1
(``identity.Relu41IdentityModel``). Attribute names follow the reference, so its ``ma_module_iter_*.pth`` loads
strictly into the transform and its ``decoder_iter_*.pth`` into the decoder.

Training follows the reference code, which differs from the paper in its disentanglement losses: the paper
compares stylisations that share a content (or a style); the code compares two random permutations of one batch
of stylisations (``dis_loss_c``/``dis_loss_s`` in its ``train.py``), and switches them on only while the weighted
content plus style loss is under 10. distst does the same, the second content/style batch of the reference being
the batch itself rolled by one image (the same kind of random pairs, from the one batch the trainer gives).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from .. import registry
from .decoder import REFERENCE_WIDTHS as DECODER_WIDTHS
from .identity import CONTENT_TAPS, IdentitySection, IdentityTrainedModel, Relu41IdentityModel
from .plan import Plan
from .sanet import SANetModule
from .stats import mean_std_loss, mean_variance_norm
from .stylecache import StyleCache
from .vgg import VGGEncoder, reference_plan


class StyleChannelAttention(nn.Module):
    """The reference ``Style_SA``: attention between channels of the style features.

    energy[i, j] = <f_i, g_j> over positions (f and g of the raw style), softmax over j; output channel j is
    sum_i attention[i, j] h_i, with h of the normalised style; out_conv and a residual. ``f`` and ``h`` share
    ``key_channels`` (summed over), ``g`` sets the output's ``value_channels``.
    """

    def __init__(self, channels: int, key_channels: int | None = None, value_channels: int | None = None) -> None:
        super().__init__()
        key_channels, value_channels = key_channels or channels, value_channels or channels
        self.f = nn.Conv2d(channels, key_channels, (1, 1))
        self.g = nn.Conv2d(channels, value_channels, (1, 1))
        self.h = nn.Conv2d(channels, key_channels, (1, 1))
        self.out_conv = nn.Conv2d(value_channels, channels, (1, 1))

    def forward(self, style: Tensor) -> Tensor:
        # Einsums over the 4-d features: no reshape reads the style's height and width, so an exported content
        # graph fed the cached style features does not reach back to the style image for them.
        energy = torch.einsum("nkhw,nvhw->nkv", self.f(style), self.g(style))
        attention = torch.softmax(energy, dim=-1)
        out = torch.einsum("nkv,nkhw->nvhw", attention, self.h(mean_variance_norm(style)))
        return self.out_conv(out) + style


class MultiAdaptationModule(nn.Module):
    """The reference ``Multi_Adaptation_Module`` (attributes ``CA``, ``CSA``, ``SSA``) on relu4_1 features."""

    def __init__(self, channels: int, widths: Mapping[str, int] | None = None) -> None:
        super().__init__()
        widths = widths or {}
        self.CA = SANetModule(channels, widths.get("CA.key"), widths.get("CA.value"))
        self.CSA = SANetModule(channels, widths.get("CSA.key"), widths.get("CSA.value"))
        self.SSA = StyleChannelAttention(channels, widths.get("SSA.key"), widths.get("SSA.value"))

    def forward(self, content4_1: Tensor, style4_1: Tensor) -> Tensor:
        adapted_content = self.CSA(content4_1, content4_1)
        return self.CA(adapted_content, self.SSA(style4_1))


class MANetSection(IdentitySection):
    """``model.*`` for MANet: the reference code's loss weights (content 1, style 5, identity 50 and 1,
    disentanglement 1 while the weighted content plus style loss is under 10)."""

    name: Literal["manet"] = "manet"
    style_weight: float = Field(5.0, ge=0)
    disentangle_weight: float = Field(1.0, ge=0, description="weight of each disentanglement loss")
    disentangle_below: float = Field(10.0, gt=0, description="the disentanglement losses count only while "
                                                             "content + style (weighted) is under this")


def _shuffled(feats: Tensor) -> Tensor:
    """The batch in a random order (torch's RNG, so seeded training draws the same), as the reference's
    ``shuffle``."""
    return feats[torch.randperm(feats.shape[0], device=feats.device)]


@registry.model(MANetSection, weight_keys=IdentityTrainedModel.WEIGHT_KEYS)
class MANet(Relu41IdentityModel):
    # SSA's output depends on the style only, but caching it would split the module: the style's relu4_1 is cached.
    style_cache = StyleCache.of_taps(("relu4_1",))

    def __init__(self, cfg: MANetSection | None = None) -> None:
        super().__init__(cfg or MANetSection())

    def build_transform(self, plan: Plan) -> nn.Module:
        return MultiAdaptationModule(plan["encoder"]["conv4_1"], plan["transform"])

    @classmethod
    def reference_plan(cls) -> Plan:
        # Each attention's key and value widths. No check_plan: every out_conv maps back to the encoder's conv4_1
        # width by construction, so any plan fits the residual additions.
        attention = {f"{part}.{kind}": 512 for part in ("CSA", "SSA", "CA") for kind in ("key", "value")}
        return {"encoder": reference_plan(cls.encoder_depth), "transform": attention, "decoder": dict(DECODER_WIDTHS)}

    def loss_weights(self) -> dict[str, float]:
        weight = self.cfg.disentangle_weight  # type: ignore[attr-defined]
        return {**super().loss_weights(), "disentangle_content": weight, "disentangle_style": weight}

    def loss_terms(self, content: Tensor, style: Tensor, loss_net: VGGEncoder) -> dict[str, Tensor]:
        """The identity-trained terms plus the reference code's disentanglement terms: stylisations of each content
        with another style (and of another content with each style), each compared with itself in two random
        orders. ``errors`` are the identity-trained three (no random terms), so E is comparable with SANet's."""
        p = self.identity_pass(content, style, loss_net)
        assert p.content_enc is not None and p.style_enc is not None  # identity_pass keeps the encoder's features
        terms = self.identity_losses(p, content, style)
        content4_1, style4_1 = p.content_enc[-1], p.style_enc[-1]
        other_style = loss_net(self.decoder(self.transform(content4_1, style4_1.roll(1, 0))))
        other_content = loss_net(self.decoder(self.transform(content4_1.roll(1, 0), style4_1)))
        mse = nn.functional.mse_loss
        # Each shuffle is drawn anew, as the reference's (its two orders of one batch, per layer).
        dis_content = sum(mse(mean_variance_norm(_shuffled(other_content[i])), mean_variance_norm(_shuffled(other_content[i])))
                          for i in reversed(CONTENT_TAPS))
        dis_style = sum(mean_std_loss(_shuffled(feat), _shuffled(feat)) for feat in other_style)
        cfg = self.cfg
        weighted = cfg.content_weight * terms["content"] + cfg.style_weight * terms["style"]  # type: ignore[attr-defined]
        on = (weighted.detach() < cfg.disentangle_below).to(weighted.dtype)  # type: ignore[attr-defined]
        return {**terms, "disentangle_content": on * dis_content, "disentangle_style": on * dis_style}
