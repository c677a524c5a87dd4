"""AdaAttN (Liu et al., "AdaAttN: Revisit Attention Mechanism in Arbitrary Neural Style Transfer", ICCV 2021).

The official configuration (``--shallow_layer --skip_connection_3``), the one its released files fit:

- keys: at relu3_1, relu4_1 and relu5_1, the mean-variance-normalised features of every shallower tap,
  nearest-resized to the layer's size, concatenated with the layer's own normalised features (448, 960 and 1472
  channels at the reference widths);
- an AdaAttN module per layer: Q = f(content key), K = g(style key), V = h(style); A = softmax(Q^T K) over
  the style positions; the attention-weighted mean M and std S of V; out = S * norm(content) + M;
- the ``transformer``: merge_conv(pad(AdaAttN_4_1 + up2(AdaAttN_5_1))); a separate ``adaattn_3`` on relu3_1 feeds
  the decoder through its skip connection (the decoder reads the pair).

Attribute names follow the reference, so its ``latest_net_transformer.pth``, ``latest_net_adaattn_3.pth`` and
``latest_net_decoder.pth`` load strictly. Where a style has more positions than a module's ``max_sample``, the
reference seeds the *global* RNG inside forward (``torch.manual_seed(seed); torch.randperm(n)``); here the same
subset comes from a private generator seeded the same way, so outputs equal the reference's and the training
RNG stream is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from .. import registry
from .base import StyleTransferModel, StyleTransferSection
from .decoder import DECODER_LAYOUT, decoder_layers, named_convs, rgb_layers
from .decoder import REFERENCE_WIDTHS as DECODER_WIDTHS
from .plan import Plan, require_equal
from .stats import blend, mean_variance_norm, per_sample_l2, style_error, style_loss
from .stylecache import StyleCache
from .vgg import TAPS, VGGEncoder, reference_plan

#: The reference's seed at test time (``self.seed = 6666``): inference and evaluation sample with it.
REFERENCE_SEED = 6666
#: Training draws a fresh seed per step from the training RNG, as the reference's ``optimize_parameters``.
SEED_RANGE = 10_000_000
#: ``networks.AdaAttN``'s default, which the transformer's two modules keep.
TRANSFORMER_MAX_SAMPLE = 256 * 256
#: ``AdaAttNModel.max_sample``: the relu3_1 module's and the local loss's limit.
SKIP_MAX_SAMPLE = 64 * 64
LOSS_MAX_SAMPLE = 64 * 64
#: Indices (into relu1_1..relu5_1) of the layers with an AdaAttN module, and of the loss layers (relu2_1..5_1).
SKIP_TAP, MAIN_TAP, DEEP_TAP = 2, 3, 4
LOSS_TAPS = (1, 2, 3, 4)
TAP_NAMES = tuple(TAPS)
ENCODER_CONVS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
#: ``model.*`` keys of the four official files (the registry record's ``weight_keys``).
WEIGHT_KEYS = (*StyleTransferModel.WEIGHT_KEYS, "adaattn3_weights")


# --- the attention, shared by the modules and the local loss ----------------------------------------

def nearest_downsample(feat: Tensor, factor: int) -> Tensor:
    """``nn.functional.interpolate(feat, size)`` (nearest) where ``size`` is ``feat``'s divided by ``factor``
    exactly: output pixel i reads input pixel floor(i * factor), every factor-th one.

    A strided slice needs no output size, so an exported content graph fed the cached style taps never reads the
    style image's shape (the interpolation's size would be computed from it).
    """
    return feat[..., ::factor, ::factor]


def attention_key(feats: Sequence[Tensor], last: int) -> Tensor:
    """The reference ``get_key`` with ``shallow_layer``: normalised taps 0..last, resized to tap ``last``.

    Tap i is 2^(last - i) times the size of tap ``last`` (each VGG block halves it; inputs are multiples of 16).
    """
    shallower = [mean_variance_norm(nearest_downsample(feat, 2 ** (last - i))) for i, feat in enumerate(feats[:last])]
    return torch.cat([*shallower, mean_variance_norm(feats[last])], dim=1)


def sampled_positions(positions: int, max_sample: int, seed: int, device: torch.device) -> Tensor | None:
    """The style positions the reference keeps when there are more than ``max_sample`` (None: all of them).

    ``torch.randperm(n, generator=Generator().manual_seed(seed))`` draws what the reference's
    ``torch.manual_seed(seed); torch.randperm(n)`` does, without touching the global RNG.
    """
    if positions <= max_sample:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(positions, generator=generator)[:max_sample].to(device)


def attention_statistics(query: Tensor, key: Tensor, value: Tensor, max_sample: int, seed: int,
                         detach_attention: bool = False) -> tuple[Tensor, Tensor]:
    """Attention-weighted mean and std of ``value`` for every query position.

    ``query`` N x K x Hc x Wc, ``key`` N x K x Hs x Ws, ``value`` N x C x Hs x Ws -> two N x C x Hc x Wc tensors.
    The reference multiplies A (N x Nc x Ns) by V^T; this computes the transpose, V A^T, so the value channels
    stay in dim 1 for the channel-pruning dependency graph (the same numbers). ``detach_attention``: the
    attention weights without their autograd history (``AdaAttNModel.coupling_forward`` only).
    """
    n, _, h, w = query.shape
    keys, values = key.flatten(2), value.flatten(2)
    index = sampled_positions(keys.shape[-1], max_sample, seed, keys.device)
    if index is not None:
        keys, values = keys[:, :, index], values[:, :, index]
    attention = torch.softmax(torch.bmm(query.flatten(2).transpose(1, 2), keys), dim=-1)  # N x Nc x Ns
    if detach_attention:
        attention = attention.detach()
    weights = attention.transpose(1, 2)
    mean = torch.bmm(values, weights)  # N x C x Nc
    std = torch.sqrt(torch.relu(torch.bmm(values.square(), weights) - mean.square()))
    # Shaped by -1, never the input's channel count, so pruned or slimmed widths flow through.
    return mean.view(n, -1, h, w), std.view(n, -1, h, w)


class AdaAttN(nn.Module):
    """The reference ``networks.AdaAttN``: f and g project the keys (``key_channels`` -> ``projected``, both the
    key width in the reference), h the style values (``channels`` -> ``channels``)."""

    def __init__(self, channels: int, key_channels: int, max_sample: int, projected: int | None = None) -> None:
        super().__init__()
        projected = projected or key_channels
        self.f = nn.Conv2d(key_channels, projected, (1, 1))
        self.g = nn.Conv2d(key_channels, projected, (1, 1))
        self.h = nn.Conv2d(channels, channels, (1, 1))
        self.max_sample = max_sample
        #: Set only while the channel-pruning dependency graph is traced (``AdaAttNModel.coupling_forward``).
        self.detach_attention = False

    def forward(self, content: Tensor, style: Tensor, content_key: Tensor, style_key: Tensor,
                seed: int = REFERENCE_SEED) -> Tensor:
        mean, std = attention_statistics(self.f(content_key), self.g(style_key), self.h(style), self.max_sample, seed,
                                         self.detach_attention)
        return std * mean_variance_norm(content) + mean


class Transformer(nn.Module):
    """The reference ``networks.Transformer`` with ``shallow_layer``: AdaAttN at relu4_1 and relu5_1, the
    relu5_1 branch upsampled 2x and added, then a 3x3 merge conv."""

    def __init__(self, channels: int, key4_1: int, key5_1: int, widths: Mapping[str, int] | None = None) -> None:
        super().__init__()
        widths = widths or {}
        self.attn_adain_4_1 = AdaAttN(channels, key4_1, TRANSFORMER_MAX_SAMPLE, widths.get("attn_adain_4_1.key"))
        self.attn_adain_5_1 = AdaAttN(channels, key5_1, TRANSFORMER_MAX_SAMPLE, widths.get("attn_adain_5_1.key"))
        self.upsample5_1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.merge_conv_pad = nn.ReflectionPad2d((1, 1, 1, 1))
        self.merge_conv = nn.Conv2d(channels, channels, (3, 3))

    def forward(self, content4_1: Tensor, style4_1: Tensor, content5_1: Tensor, style5_1: Tensor,
                content4_1_key: Tensor, style4_1_key: Tensor, content5_1_key: Tensor, style5_1_key: Tensor,
                seed: int = REFERENCE_SEED) -> Tensor:
        branch4 = self.attn_adain_4_1(content4_1, style4_1, content4_1_key, style4_1_key, seed)
        branch5 = self.attn_adain_5_1(content5_1, style5_1, content5_1_key, style5_1_key, seed)
        return self.merge_conv(self.merge_conv_pad(branch4 + self.upsample5_1(branch5)))


class AdaAttNTransform(nn.Module):
    """distst's transform group: the reference's ``transformer`` and ``adaattn_3`` (two official files)."""

    def __init__(self, encoder_widths: Mapping[str, int], widths: Mapping[str, int]) -> None:
        super().__init__()
        tap_widths = [encoder_widths[conv] for conv in ENCODER_CONVS]
        self.transformer = Transformer(tap_widths[MAIN_TAP], sum(tap_widths[:MAIN_TAP + 1]),
                                       sum(tap_widths[:DEEP_TAP + 1]), widths)
        self.adaattn_3 = AdaAttN(tap_widths[SKIP_TAP], sum(tap_widths[:SKIP_TAP + 1]), SKIP_MAX_SAMPLE,
                                 widths.get("adaattn_3.key"))

    def forward(self, content_feats: Sequence[Tensor], style_feats: Sequence[Tensor],
                seed: int = REFERENCE_SEED) -> tuple[Tensor, Tensor]:
        """(the transformer's output at relu4_1, the relu3_1 module's output) from the five taps of each."""
        def keys(tap: int) -> tuple[Tensor, Tensor]:
            return attention_key(content_feats, tap), attention_key(style_feats, tap)

        skip = self.adaattn_3(content_feats[SKIP_TAP], style_feats[SKIP_TAP], *keys(SKIP_TAP), seed)
        main = self.transformer(content_feats[MAIN_TAP], style_feats[MAIN_TAP], content_feats[DEEP_TAP],
                                style_feats[DEEP_TAP], *keys(MAIN_TAP), *keys(DEEP_TAP), seed)
        return main, skip


class AdaAttNDecoder(nn.Module):
    """The reference ``networks.Decoder`` with ``skip_connection_3``: ``decoder_layer_1`` (conv3_4 and an
    upsample) on the transformer's output, then ``decoder_layer_2`` on it concatenated with the relu3_1 module's
    output. Convs are named by the encoder layer they mirror, as ``decoder.Decoder``."""

    def __init__(self, in_channels: int, skip_channels: int, widths: Mapping[str, int]) -> None:
        super().__init__()
        first_upsample = DECODER_LAYOUT.index("U")
        self.decoder_layer_1 = nn.Sequential(*decoder_layers(DECODER_LAYOUT[:first_upsample + 1], in_channels, widths))
        # Its first conv reads the upsampled conv3_4 output and the skip features, concatenated.
        second_in = widths[DECODER_LAYOUT[0]] + skip_channels
        self.decoder_layer_2 = nn.Sequential(*decoder_layers(DECODER_LAYOUT[first_upsample + 1:], second_in, widths),
                                             *rgb_layers(widths[DECODER_LAYOUT[-1]]))

    def forward(self, features: tuple[Tensor, Tensor]) -> Tensor:
        """The image from the pair (transformer output at relu4_1, relu3_1 module output)."""
        main, skip = features
        return self.decoder_layer_2(torch.cat((self.decoder_layer_1(main), skip), dim=1))

    def conv_layers(self) -> dict[str, nn.Conv2d]:
        """The resizable convs by mirrored name, then ``rgb``."""
        return named_convs([*self.decoder_layer_1, *self.decoder_layer_2])


# --- the model -------------------------------------------------------------------------------------

class AdaAttNSection(StyleTransferSection):
    """``model.*`` for AdaAttN: the reference's loss weights (lambda_content 0, lambda_global 10, lambda_local 3)."""

    name: Literal["adaattn"] = "adaattn"
    transform_weights: str | None = Field(None, description="local latest_net_transformer.pth (the reference's "
                                                            "Transformer: relu4_1/relu5_1 AdaAttN and merge conv)")
    decoder_weights: str | None = Field(None, description="local latest_net_decoder.pth (with skip_connection_3)")
    adaattn3_weights: str | None = Field(None, description="local latest_net_adaattn_3.pth (the relu3_1 AdaAttN)")
    content_weight: float = Field(0.0, ge=0, description="lambda_content: normalised-feature MSE, relu2_1..relu5_1")
    style_weight: float = Field(10.0, ge=0, description="lambda_global: mean/std MSE, relu2_1..relu5_1")
    local_weight: float = Field(3.0, ge=0, description="lambda_local: attention-weighted mean/std loss")


@registry.model(AdaAttNSection, weight_keys=WEIGHT_KEYS)
class AdaAttNModel(StyleTransferModel):
    encoder_depth = "relu5_1"
    # The keys need every shallower tap of the style, and the values relu3_1..relu5_1: the style side hands over
    # all five taps; key concatenation and the f/g/h convs stay in the content graph (one definition of them).
    style_cache: ClassVar[StyleCache | None] = StyleCache.of_taps(TAP_NAMES)
    input_multiple = 16  # relu5_1 is upsampled 2x onto relu4_1, and the decoder's skip meets relu3_1's size
    min_size = 32
    # "transform" is the transformer's output (the decoder's main input, a tensor as distillation needs);
    # "transform/relu3_1" the skip connection's.
    feature_names = (*StyleTransferModel.feature_names, "transform/relu3_1")
    WEIGHT_KEYS: ClassVar[tuple[str, ...]] = WEIGHT_KEYS

    def __init__(self, cfg: AdaAttNSection | None = None) -> None:
        super().__init__(cfg or AdaAttNSection())

    # --- parts and plan ------------------------------------------------------------------------
    def build_transform(self, plan: Plan) -> nn.Module:
        return AdaAttNTransform(plan["encoder"], plan["transform"])

    def build_decoder(self, plan: Plan) -> nn.Module:
        return AdaAttNDecoder(plan["encoder"]["conv4_1"], plan["encoder"]["conv3_1"], plan["decoder"])

    @classmethod
    def reference_plan(cls) -> Plan:
        # f/g output widths (the attention's projected keys); h and merge_conv keep their input widths (tied to
        # the encoder's by S * norm(content) + M and the branch addition).
        keys = {"attn_adain_4_1.key": 960, "attn_adain_5_1.key": 1472, "adaattn_3.key": 448}
        return {"encoder": reference_plan(cls.encoder_depth), "transform": keys, "decoder": dict(DECODER_WIDTHS)}

    @classmethod
    def check_plan(cls, plan: Plan) -> None:
        require_equal(plan, ("encoder", "conv4_1"), ("encoder", "conv5_1"),
                      "AdaAttN adds its relu4_1 and upsampled relu5_1 attention branches")

    def part_weight_files(self) -> list[tuple[str | None, nn.Module]]:
        """Three official files: the transformer, the relu3_1 module (both inside the transform group), the
        decoder."""
        cfg = self.cfg
        return [(cfg.decoder_weights, self.decoder),  # type: ignore[attr-defined]
                (cfg.transform_weights, self.transform.transformer),  # type: ignore[attr-defined]
                (cfg.adaattn3_weights, self.transform.adaattn_3)]  # type: ignore[attr-defined]

    def attention_modules(self) -> list[AdaAttN]:
        """The three AdaAttN modules: relu3_1's, then the transformer's relu4_1 and relu5_1."""
        transformer = self.transform.transformer  # type: ignore[union-attr]
        return [self.transform.adaattn_3, transformer.attn_adain_4_1, transformer.attn_adain_5_1]  # type: ignore[list-item]

    def coupling_forward(self, size: int) -> list[Tensor]:
        """The base's alpha=0.5 forward, traced with two changes that keep Torch-Pruning's graph true.

        Torch-Pruning treats every op it does not know (bmm, transpose) as element-wise on dim 1, so through the
        attention it would tie the style *positions* and the f/g widths to the value channels. The attention
        weights carry no channel coupling (f and g are contracted away), so here they enter without their
        history, and f's and g's outputs are returned as extra graph outputs instead: the graph then sees every
        real coupling, the encoder taps concatenated into f's and g's inputs and h's values tied to the content
        features by S * norm(Fc) + M, and nothing else.
        """
        projections: list[Tensor] = []
        modules = self.attention_modules()
        hooks = [conv.register_forward_hook(lambda _m, _i, out: projections.append(out))
                 for module in modules for conv in (module.f, module.g)]
        for module in modules:
            module.detach_attention = True
        try:
            output = super().coupling_forward(size)
        finally:
            for module in modules:
                module.detach_attention = False
            for hook in hooks:
                hook.remove()
        return [output, *projections]

    # --- forward -------------------------------------------------------------------------------
    def stylize_features(self, content_feats: list[Tensor], style_feats: list[Tensor], alpha: float,
                         seed: int = REFERENCE_SEED) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """The decoder's pair; alpha < 1 blends each with the content's own features at its depth."""
        main, skip = self.transform(content_feats, style_feats, seed)
        return blend(main, content_feats[MAIN_TAP], alpha), blend(skip, content_feats[SKIP_TAP], alpha)

    def forward(self, content: Tensor, style: Tensor, alpha: float = 1.0,  # type: ignore[override]
                seed: int = REFERENCE_SEED) -> Tensor:
        """As the base forward, recording the pair's two tensors separately; ``seed`` picks the style positions
        a module samples when a style has more than its ``max_sample``."""
        self.check_input(content, style)
        pair = self.stylize_features(self.encode(content, "content"), self.encode(style, "style"), alpha, seed)
        self.features.record("transform", pair[0])
        self.features.record("transform/relu3_1", pair[1])
        output = self.decoder(pair)
        self.features.record("output", output)
        return output

    # --- losses and errors ---------------------------------------------------------------------
    def loss_weights(self) -> dict[str, float]:
        return {**super().loss_weights(), "local": self.cfg.local_weight}  # type: ignore[attr-defined]

    def loss_terms(self, content: Tensor, style: Tensor, loss_net: VGGEncoder) -> dict[str, Tensor]:
        """content, style (global) and local, as ``adaattn_model.compute_losses`` (unweighted). The step's seed
        comes from the training RNG (one draw), shared by the forward and the local loss, as the reference."""
        seed = int(torch.randint(SEED_RANGE, (1,)))
        output = self(content, style, seed=seed)
        out_feats, content_feats, style_feats = self._loss_features(output, content, style, loss_net)
        mse = nn.functional.mse_loss
        return {
            "content": sum(mse(mean_variance_norm(out_feats[i]), mean_variance_norm(content_feats[i]))
                           for i in LOSS_TAPS),
            "style": style_loss([out_feats[i] for i in LOSS_TAPS], [style_feats[i] for i in LOSS_TAPS]),
            "local": sum(mse(out_feats[i], local_target(content_feats, style_feats, i, seed)) for i in LOSS_TAPS),
        }

    def errors(self, content: Tensor, style: Tensor, loss_net: VGGEncoder) -> dict[str, Tensor]:
        """Per pair (shape N), the losses' unweighted counterparts as L2 norms summed over relu2_1..relu5_1:
        content_error ||norm(out) - norm(content)||, style_error ||mu_out - mu_s|| + ||sigma_out - sigma_s||,
        local_error ||out - (S * norm(content) + M)||. Sampled with the reference's test seed: no random draws."""
        output = self(content, style)
        out_feats, content_feats, style_feats = self._loss_features(output, content, style, loss_net)
        content_error = sum(per_sample_l2(mean_variance_norm(out_feats[i]) - mean_variance_norm(content_feats[i]))
                            for i in LOSS_TAPS)
        local_error = sum(per_sample_l2(out_feats[i] - local_target(content_feats, style_feats, i, REFERENCE_SEED))
                          for i in LOSS_TAPS)
        return {"content_error": content_error,  # type: ignore[dict-item]
                "style_error": style_error([out_feats[i] for i in LOSS_TAPS], [style_feats[i] for i in LOSS_TAPS]),
                "local_error": local_error}  # type: ignore[dict-item]

    @staticmethod
    def _loss_features(output: Tensor, content: Tensor, style: Tensor,
                       loss_net: VGGEncoder) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        with torch.no_grad():
            content_feats, style_feats = loss_net(content), loss_net(style)
        return loss_net(output), content_feats, style_feats


def local_target(content_feats: Sequence[Tensor], style_feats: Sequence[Tensor], tap: int, seed: int) -> Tensor:
    """The local loss's target at ``tap``: the parameter-free AdaAttN of the loss VGG's features (keys from
    ``attention_key``, values the style's raw features, the loss's own ``max_sample``), S * norm(Fc) + M."""
    with torch.no_grad():
        mean, std = attention_statistics(attention_key(content_feats, tap), attention_key(style_feats, tap),
                                         style_feats[tap], LOSS_MAX_SAMPLE, seed)
        return std * mean_variance_norm(content_feats[tap]) + mean


__all__ = ["AdaAttN", "AdaAttNDecoder", "AdaAttNModel", "AdaAttNSection", "AdaAttNTransform", "Transformer",
           "attention_key", "attention_statistics", "local_target", "sampled_positions"]
