"""LST (Li et al., "Learning Linear Transformations for Fast Image and Video Style Transfer", CVPR 2019).

The WCT auto-encoder (a VGG encoder to relu4_1, or relu3_1, and its mirrored decoder) with a learnt linear
transform in between (``MulLayer``): both features are centred; a small CNN on each side (``cnet``, ``snet``)
reduces them to a matrix_size x matrix_size Gram-like matrix, turned by a linear layer into a matrix; the content
features, compressed to matrix_size channels (``compress``), are multiplied by T = S-matrix @ C-matrix, mapped back
(``unzip``) and the style mean is added.

Attribute names follow the reference (``libs/models.py``: ``encoder4``/``decoder4``, ``encoder3``/``decoder3``,
``encoder5`` for the loss network; ``libs/Matrix.py``: ``MulLayer``/``CNN``), so the official ``vgg_r41.pth``,
``dec_r41.pth``, ``r41.pth`` (and their r31 versions) and the loss network's ``vgg_r51.pth`` load strictly.
Max pools are floor-mode (``nn.MaxPool2d(2, 2)``), not ``vgg_normalised``'s ceil mode, as the reference.

Channel plans use the VGG layer names of ``vgg.py``: the encoder's hand-named convs ``conv2``..``conv10`` are
``conv1_1``..``conv4_1`` (the leading 1x1 ``conv1`` is not resizable), the decoder's are named by the encoder
layer they mirror (``conv11`` -> ``conv3_4`` ... ``conv18`` -> ``conv1_1``; ``conv19`` is the RGB conv).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from .. import registry
from ..config import Config, TrainConfig
from ..weights import load_checked, read_state_dict
from .base import Stage, StyleTransferModel, StyleTransferSection, inverse_decay
from .plan import Plan, merge_plan, scale_plan
from .stats import blend, per_sample_l2
from .stylecache import StyleCache
from .vgg import LAST_CONV, REFERENCE_WIDTHS, VGGEncoder, convs_up_to, random_features_init

Layer = Literal["r41", "r31"]

#: The reference encoder's 3x3 convs in order: (attribute, VGG plan name). ``conv1`` is the leading 1x1 conv.
ENCODER_CONVS: tuple[tuple[str, str], ...] = (
    ("conv2", "conv1_1"), ("conv3", "conv1_2"), ("conv4", "conv2_1"), ("conv5", "conv2_2"),
    ("conv6", "conv3_1"), ("conv7", "conv3_2"), ("conv8", "conv3_3"), ("conv9", "conv3_4"),
    ("conv10", "conv4_1"), ("conv11", "conv4_2"), ("conv12", "conv4_3"), ("conv13", "conv4_4"),
    ("conv14", "conv5_1"),
)
#: A floor-mode max pool follows these convs (attribute names as the reference's).
POOL_AFTER = {"conv3": "maxPool", "conv5": "maxPool2", "conv9": "maxPool3", "conv13": "maxPool4"}
#: The encoder's taps: the relu of these convs.
TAP_AFTER = {"conv2": "relu1_1", "conv4": "relu2_1", "conv6": "relu3_1", "conv10": "relu4_1", "conv14": "relu5_1"}
#: Where each variant's encoder stops (the loss network is encoder5, to relu5_1).
DEPTH: dict[str, str] = {"r31": "relu3_1", "r41": "relu4_1", "r51": "relu5_1"}

#: The reference decoders: (attribute, mirrored encoder layer or "rgb"); "U<name>" is a 2x nearest upsample.
DECODER_LAYOUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "r41": (("conv11", "conv3_4"), ("U", "unpool"), ("conv12", "conv3_3"), ("conv13", "conv3_2"),
            ("conv14", "conv3_1"), ("conv15", "conv2_2"), ("U", "unpool2"), ("conv16", "conv2_1"),
            ("conv17", "conv1_2"), ("U", "unpool3"), ("conv18", "conv1_1"), ("conv19", "rgb")),
    "r31": (("conv7", "conv2_2"), ("U", "unpool"), ("conv8", "conv2_1"), ("conv9", "conv1_2"), ("U", "unpool2"),
            ("conv10", "conv1_1"), ("conv11", "rgb")),
}
#: The CNNs' two hidden widths (``convs.0``, ``convs.2``) per variant; ``convs.4`` outputs matrix_size channels.
CNN_HIDDEN: dict[str, tuple[int, int]] = {"r41": (256, 128), "r31": (128, 64)}
#: The reference's layers for the losses (``Train.py`` defaults), of the loss network.
STYLE_TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
CONTENT_TAP = "relu4_1"


def mirrored_name(encoder_conv: str) -> str:
    """The reference attribute of encoder plan layer ``encoder_conv`` (``conv4_1`` -> ``conv10``)."""
    return dict((plan, attr) for attr, plan in ENCODER_CONVS)[encoder_conv]


# --- encoder and decoder ------------------------------------------------------------------------

class LSTEncoder(nn.Module):
    """The reference ``encoder3``/``encoder4``/``encoder5`` to ``depth``: hand-named ``conv1``..``convK`` with
    their ``reflecPad``/``relu``/``maxPool`` modules; calling it returns the features at every tap to ``depth``,
    shallowest first."""

    def __init__(self, depth: str, widths: Mapping[str, int]) -> None:
        super().__init__()
        if depth not in DEPTH.values():
            raise ValueError(f"depth must be one of {', '.join(DEPTH.values())}, got {depth!r}")
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 3, 1, 1, 0)
        self.order: list[str] = ["conv1"]
        self.tap_names: list[str] = []
        self._tap_modules: dict[str, str] = {}
        in_channels = 3
        for attr, plan_name in ENCODER_CONVS:
            number = int(attr.removeprefix("conv"))
            pad = "reflecPad1" if number == 2 else f"reflecPad{number}"  # the reference's names
            out_channels = widths[plan_name]
            self._add(pad, nn.ReflectionPad2d((1, 1, 1, 1)))
            self._add(attr, nn.Conv2d(in_channels, out_channels, 3, 1, 0))
            self._add(f"relu{number}", nn.ReLU())
            in_channels = out_channels
            if attr in TAP_AFTER:
                self.tap_names.append(TAP_AFTER[attr])
                self._tap_modules[f"relu{number}"] = TAP_AFTER[attr]
                if TAP_AFTER[attr] == depth:
                    break
            if attr in POOL_AFTER:
                self._add(POOL_AFTER[attr], nn.MaxPool2d(kernel_size=2, stride=2))  # floor mode
        self.widths = {plan_name: self.conv_layers()[plan_name].out_channels for plan_name in self.conv_layers()}

    def _add(self, name: str, module: nn.Module) -> None:
        self.add_module(name, module)
        self.order.append(name)

    def forward(self, images: Tensor) -> list[Tensor]:
        feats, x = [], images
        for name in self.order:
            x = getattr(self, name)(x)
            if name in self._tap_modules:
                feats.append(x)
        return feats

    @property
    def out_channels(self) -> int:
        return self.widths[LAST_CONV[self.depth]]

    def conv_layers(self) -> dict[str, nn.Conv2d]:
        """The 3x3 convs by VGG plan name (``conv1_1`` ... ; the 1x1 ``conv1`` is not resizable)."""
        return {plan_name: getattr(self, attr) for attr, plan_name in ENCODER_CONVS if hasattr(self, attr)}


class LSTDecoder(nn.Module):
    """The reference ``decoder4`` (r41: ``conv11``..``conv19``) or ``decoder3`` (r31: ``conv7``..``conv11``):
    reflection-padded 3x3 convs, nearest 2x upsampling (``unpool``...), no ReLU after the RGB conv."""

    def __init__(self, layer: str, in_channels: int, widths: Mapping[str, int]) -> None:
        super().__init__()
        self.order: list[str] = []
        self._names: dict[str, str] = {}  # attribute -> mirrored plan name
        for attr, role in DECODER_LAYOUTS[layer]:
            if attr == "U":
                self._add(role, nn.UpsamplingNearest2d(scale_factor=2))
                continue
            number = attr.removeprefix("conv")
            out_channels = 3 if role == "rgb" else widths[role]
            self._add(f"reflecPad{number}", nn.ReflectionPad2d((1, 1, 1, 1)))
            self._add(attr, nn.Conv2d(in_channels, out_channels, 3, 1, 0))
            if role != "rgb":
                self._add(f"relu{number}", nn.ReLU())
            self._names[attr] = role
            in_channels = out_channels

    def _add(self, name: str, module: nn.Module) -> None:
        self.add_module(name, module)
        self.order.append(name)

    def forward(self, feats: Tensor) -> Tensor:
        x = feats
        for name in self.order:
            x = getattr(self, name)(x)
        return x

    def conv_layers(self) -> dict[str, nn.Conv2d]:
        """The resizable convs by mirrored encoder name, then ``rgb``."""
        return {role: getattr(self, attr) for attr, role in self._names.items()}


# --- the linear transform --------------------------------------------------------------------------

class CNN(nn.Module):
    """The reference ``CNN``: three 3x3 convs (zero padding) to ``matrix_size`` channels, their Gram over
    positions divided by h*w, and a linear layer to a matrix_size x matrix_size matrix (flattened)."""

    def __init__(self, in_channels: int, hidden: tuple[int, int], matrix_size: int) -> None:
        super().__init__()
        first, second = hidden
        self.convs = nn.Sequential(nn.Conv2d(in_channels, first, 3, 1, 1), nn.ReLU(),
                                   nn.Conv2d(first, second, 3, 1, 1), nn.ReLU(),
                                   nn.Conv2d(second, matrix_size, 3, 1, 1))
        self.fc = nn.Linear(matrix_size * matrix_size, matrix_size * matrix_size)

    def forward(self, centred: Tensor) -> Tensor:
        out = self.convs(centred)
        h, w = out.shape[-2:]
        flat = out.flatten(2)  # N x m x hw
        gram = torch.bmm(flat, flat.transpose(1, 2)) / (h * w)
        return self.fc(gram.flatten(1))


def centred(feats: Tensor) -> tuple[Tensor, Tensor]:
    """(features minus their per-channel mean over positions, that mean as N x C x 1 x 1)."""
    mean = feats.mean(dim=(2, 3), keepdim=True)
    return feats - mean, mean


class MulLayer(nn.Module):
    """The reference ``MulLayer`` (attributes ``snet``, ``cnet``, ``compress``, ``unzip``).

    Split into its style side (``style_side``: the style matrix and mean, what an exported style graph caches)
    and its content side (``content_side``); ``forward`` is both. Returns the transformed features only (the
    reference also returns the transform matrix, which nothing of distst reads).
    """

    def __init__(self, channels: int, matrix_size: int, cnet_hidden: tuple[int, int],
                 snet_hidden: tuple[int, int]) -> None:
        super().__init__()
        self.matrix_size = matrix_size
        self.snet = CNN(channels, snet_hidden, matrix_size)
        self.cnet = CNN(channels, cnet_hidden, matrix_size)
        self.compress = nn.Conv2d(channels, matrix_size, 1, 1, 0)
        self.unzip = nn.Conv2d(matrix_size, channels, 1, 1, 0)

    def _matrix(self, flat: Tensor) -> Tensor:
        return flat.view(flat.shape[0], self.matrix_size, self.matrix_size)

    def style_side(self, style: Tensor) -> tuple[Tensor, Tensor]:
        """(the style matrix, N x m x m; the style's channel means, N x C x 1 x 1)."""
        style_centred, style_mean = centred(style)
        return self._matrix(self.snet(style_centred)), style_mean

    def content_side(self, content: Tensor, style_matrix: Tensor, style_mean: Tensor) -> Tensor:
        content_centred, _ = centred(content)
        transform = torch.bmm(style_matrix, self._matrix(self.cnet(content_centred)))  # T = S-matrix @ C-matrix
        compressed = self.compress(content_centred)
        n, _, h, w = compressed.shape
        # Shaped by -1, never the input's channel count, so slimmed widths flow through.
        mixed = torch.bmm(transform, compressed.flatten(2)).view(n, -1, h, w)
        return self.unzip(mixed) + style_mean

    def forward(self, content: Tensor, style: Tensor) -> Tensor:
        return self.content_side(content, *self.style_side(style))


@dataclass(frozen=True)
class LinearStyleCache(StyleCache):
    """LST's cached style side: the style matrix (snet's output, as N x 1 x m x m) and the style's channel means
    (N x C x 1 x 1): all of MulLayer that depends on the style, so the content graph never runs snet."""

    def from_style(self, model: StyleTransferModel, style_feats: list[Tensor]) -> tuple[Tensor, ...]:
        matrix, mean = model.transform.style_side(style_feats[-1])  # type: ignore[operator]
        return matrix.unsqueeze(1), mean

    def transform(self, model: StyleTransferModel, content_feats: list[Tensor], cached: tuple[Tensor, ...]) -> Tensor:
        matrix, mean = cached
        return model.transform.content_side(content_feats[-1], matrix.squeeze(1), mean)  # type: ignore[operator]


# --- losses and errors ---------------------------------------------------------------------------

def gram(feats: Tensor) -> Tensor:
    """The reference ``GramMatrix``: F F^T over positions divided by c*h*w (N x C x C)."""
    n, c, h, w = feats.shape
    flat = feats.reshape(n, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def mean_gram_loss(out: Tensor, ref: Tensor) -> Tensor:
    """The reference ``styleLoss`` at one layer: summed squared differences of the channel means and of the
    Grams, divided by the batch."""
    mean_term = (out.mean(dim=(2, 3)) - ref.mean(dim=(2, 3))).square().sum()
    return (mean_term + (gram(out) - gram(ref)).square().sum()) / ref.shape[0]


def mean_gram_error(out: Tensor, ref: Tensor) -> Tensor:
    """Per sample (shape N): ||mean_out - mean_ref||_2 + ||Gram_out - Gram_ref||_F at one layer."""
    return per_sample_l2(out.mean(dim=(2, 3)) - ref.mean(dim=(2, 3))) + per_sample_l2(gram(out) - gram(ref))


# --- the model ----------------------------------------------------------------------------------

class LSTSection(StyleTransferSection):
    """``model.*`` for LST: the reference's variant, matrix size, loss weights and weight files.

    ``vgg_weights`` takes ``vgg_r41.pth`` (``vgg_r31.pth`` with ``layer: r31``), ``decoder_weights``
    ``dec_r41.pth``, ``transform_weights`` ``r41.pth``, ``loss_vgg_weights`` ``vgg_r51.pth``.
    """

    name: Literal["lst"] = "lst"
    layer: Layer = Field("r41", description="features transformed: relu4_1 (r41) or relu3_1 (r31)")
    matrix_size: int = Field(32, ge=1, le=256, description="the reference's matrixSize (compress/unzip width)")
    loss_vgg_weights: str | None = Field(None, description="local vgg_r51.pth (the loss network, encoder5 layout)")
    decoder: Literal["auto", "frozen", "trainable"] = Field(
        "auto", description="frozen = reference set-up (only the transform learns); auto = trainable when the method "
                            "trains the encoder (IMP, channel pruning) or no decoder_weights are given, else frozen")
    content_weight: float = Field(1.0, ge=0)
    style_weight: float = Field(0.02, ge=0)

    def resolve(self, cfg: Config) -> None:
        super().resolve(cfg)
        if self.decoder == "auto":
            trains_all = registry.method_record(cfg.prune.method).trains_encoder
            self.decoder = "trainable" if trains_all or not self.decoder_weights else "frozen"

    def decoder_trainable(self) -> bool:
        """Whether the decoder learns; an unresolved ``auto`` (no method known: a section built outside a job)
        reads as trainable unless ``decoder_weights`` are given."""
        if self.decoder == "auto":
            return not self.decoder_weights
        return self.decoder == "trainable"


def _reference_widths(depth: str) -> dict[str, int]:
    return {name: REFERENCE_WIDTHS[name] for name in convs_up_to(depth)}


def layer_plan(layer: str) -> Plan:
    """The reference widths of variant ``layer`` (``r41``/``r31``); the matrix size is ``model.matrix_size``."""
    first, second = CNN_HIDDEN[layer]
    transform = {f"{net}.convs.{index}": width for net in ("cnet", "snet") for index, width in ((0, first), (2, second))}
    decoder = {role: REFERENCE_WIDTHS[role] for attr, role in DECODER_LAYOUTS[layer] if attr != "U" and role != "rgb"}
    return {"encoder": _reference_widths(DEPTH[layer]), "transform": transform, "decoder": decoder}


def encoder_state_from_file(path: str | Path, depth: str, width: float, widths: Mapping[str, int]
                            ) -> dict[str, Tensor]:
    """An encoder state in the reference (``conv1``...) layout from a local file: the reference's own
    ``vgg_r*.pth`` layout as it is (the caller's ``load_checked`` checks it strictly), or a ``vgg_normalised.pth``
    (53-module layout, strictly checked here at ``width``, ``widths`` to ``depth``) renamed to it: the same convs,
    only the pools' mode differs. (distst writes He-initialised loss VGGs in that layout.)"""
    state = read_state_dict(path)
    if "conv1.weight" in state or "0.weight" not in state:
        return state
    vgg = VGGEncoder(depth, width, dict(widths))
    vgg.load_reference(path)
    renamed = {"conv1.weight": vgg[0].weight, "conv1.bias": vgg[0].bias}
    for plan_name, conv in vgg.conv_layers().items():
        renamed[f"{mirrored_name(plan_name)}.weight"] = conv.weight
        renamed[f"{mirrored_name(plan_name)}.bias"] = conv.bias
    return {k: v.detach().clone() for k, v in renamed.items()}


@registry.model(LSTSection, weight_keys=(*StyleTransferModel.WEIGHT_KEYS, "loss_vgg_weights"))
class LST(StyleTransferModel):
    encoder_depth = "relu4_1"  # r41's; an r31 model's encoder stops at relu3_1 (``DEPTH``)
    input_multiple = 8  # three floor pools: other sizes would be cropped by the encoder
    min_size = 32  # the loss network's relu5_1 (1/16) must be 2x2 at least for its reflection pad

    def __init__(self, cfg: LSTSection | None = None) -> None:
        super().__init__(cfg or LSTSection())
        # The base compares with r41's default plan; the loss network copies an encoder of its variant's widths.
        self._reference_encoder = self.plan["encoder"] == self.layer_default_plan(self.cfg)["encoder"]

    # --- plans -----------------------------------------------------------------------------
    @classmethod
    def reference_plan(cls) -> Plan:
        return layer_plan("r41")

    @classmethod
    def layer_default_plan(cls, cfg: LSTSection) -> Plan:
        """The default plan of the section's variant at its width (``default_plan`` is r41's, by contract)."""
        return scale_plan(layer_plan(cfg.layer), cfg.width)

    @classmethod
    def resolve_plan(cls, cfg: LSTSection) -> Plan:  # type: ignore[override]
        """The variant's default plan with ``model.plan`` laid over it: an r31 model refuses r41's layers."""
        plan = merge_plan(cls.layer_default_plan(cfg), cfg.plan, f"{cls.name} (layer {cfg.layer})")
        cls.check_plan(plan)
        return plan

    # --- parts -----------------------------------------------------------------------------
    @property
    def layer(self) -> str:
        return self.cfg.layer  # type: ignore[attr-defined, no-any-return]

    def build_encoder(self, plan: Plan) -> nn.Module:
        return LSTEncoder(DEPTH[self.layer], plan["encoder"])

    def build_transform(self, plan: Plan) -> nn.Module:
        widths = plan["transform"]
        hidden = {net: (widths[f"{net}.convs.0"], widths[f"{net}.convs.2"]) for net in ("cnet", "snet")}
        last = LAST_CONV[DEPTH[self.layer]]
        return MulLayer(plan["encoder"][last], self.cfg.matrix_size, hidden["cnet"], hidden["snet"])  # type: ignore[attr-defined]

    def build_decoder(self, plan: Plan) -> nn.Module:
        return LSTDecoder(self.layer, plan["encoder"][LAST_CONV[DEPTH[self.layer]]], plan["decoder"])

    @property
    def style_cache(self) -> StyleCache:  # type: ignore[override]
        return LinearStyleCache(("style_matrix", "style_mean"), (DEPTH[self.layer],),
                                kind="snet's style matrix (N x 1 x m x m) and the style's channel means (N x C x 1 x 1)")

    # --- weights ---------------------------------------------------------------------------
    def init_weights(self, files: bool = True) -> None:
        """The base's (encoder from ``vgg_weights``, decoder and transform from their files), then the decoder
        frozen unless ``model.decoder`` makes it trainable (the reference trains only the transform)."""
        super().init_weights(files)
        self.decoder.requires_grad_(self.cfg.decoder_trainable())  # type: ignore[attr-defined]

    def load_encoder(self, vgg_weights: str | None) -> None:
        """``vgg_r41.pth``/``vgg_r31.pth`` (or a ``vgg_normalised.pth``) strictly, else a He initialisation."""
        if not vgg_weights:
            random_features_init(self.encoder)
            return
        encoder = self.encoder
        state = encoder_state_from_file(vgg_weights, encoder.depth, self.cfg.width, encoder.widths)  # type: ignore[arg-type]
        load_checked(self.encoder, state, vgg_weights)

    def loss_network(self) -> LSTEncoder:  # type: ignore[override]
        """The frozen ``encoder5`` (to relu5_1): ``model.loss_vgg_weights`` strictly when given; else
        He-initialised, with the layers the encoder has taken from ``model.vgg_weights`` (or, without that file,
        from the encoder as built when it has the reference plan), so random-weight runs measure with the
        encoder's own features."""
        cfg = self.cfg
        net = LSTEncoder("relu5_1", scale_plan({"vgg": _reference_widths("relu5_1")}, cfg.width)["vgg"])
        if cfg.loss_vgg_weights:  # type: ignore[attr-defined]
            path = cfg.loss_vgg_weights  # type: ignore[attr-defined]
            load_checked(net, encoder_state_from_file(path, net.depth, cfg.width, net.widths), path)
        else:
            random_features_init(net)
            start = self._loss_start_state(net)
            if start:
                net.load_state_dict({**net.state_dict(), **start})
        net.eval().requires_grad_(False)
        return net

    def _loss_start_state(self, net: LSTEncoder) -> dict[str, Tensor]:
        """The encoder layers the loss network starts from (without ``loss_vgg_weights``): those of
        ``model.vgg_weights`` (its layout checked strictly), else the encoder's as built, else none."""
        vgg_weights = self.cfg.vgg_weights  # type: ignore[attr-defined]
        if vgg_weights:
            state = encoder_state_from_file(vgg_weights, net.depth, self.cfg.width, net.widths)
            if "conv14.weight" not in state:  # the variant's own layout (not a whole vgg_normalised): check it
                load_checked(LSTEncoder(DEPTH[self.layer], net.widths), state, vgg_weights)
            return state
        if self._reference_encoder:
            return {k: v.detach().clone() for k, v in self.encoder.state_dict().items()}
        return {}

    # --- training ----------------------------------------------------------------------------
    def stages(self, train: TrainConfig) -> list[Stage]:
        """One Adam at lr / (1 + lr_decay * step) (the reference's); a frozen decoder is left out."""
        groups = ("encoder", "transform") + (("decoder",) if self.cfg.decoder_trainable() else ())  # type: ignore[attr-defined]
        return [Stage("main", groups, lr=train.lr, lr_lambda=inverse_decay(train.lr_decay))]

    def stylize_features(self, content_feats: list[Tensor], style_feats: list[Tensor], alpha: float) -> Tensor:
        """MulLayer on the deepest features; alpha (distst's; the reference has none) blends with the content's."""
        return blend(self.transform(content_feats[-1], style_feats[-1]), content_feats[-1], alpha)

    def _measured(self, content: Tensor, style: Tensor, loss_net: nn.Module
                  ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """Loss-network features (by tap) of the output, the content and the style."""
        names = loss_net.tap_names  # type: ignore[union-attr]
        with torch.no_grad():
            content_feats = dict(zip(names, loss_net(content), strict=True))
            style_feats = dict(zip(names, loss_net(style), strict=True))
        out_feats = dict(zip(names, loss_net(self(content, style)), strict=True))
        return out_feats, content_feats, style_feats

    def loss_terms(self, content: Tensor, style: Tensor, loss_net: nn.Module) -> dict[str, Tensor]:  # type: ignore[override]
        """The reference ``LossCriterion``: content MSE at relu4_1; style: ``mean_gram_loss`` summed over
        relu1_1..relu4_1 (weights applied by the trainer)."""
        out, content_feats, style_feats = self._measured(content, style, loss_net)
        return {"content": nn.functional.mse_loss(out[CONTENT_TAP], content_feats[CONTENT_TAP]),
                "style": sum(mean_gram_loss(out[tap], style_feats[tap]) for tap in STYLE_TAPS)}  # type: ignore[dict-item]

    def errors(self, content: Tensor, style: Tensor, loss_net: nn.Module) -> dict[str, Tensor]:  # type: ignore[override]
        """Per pair: the L2 norm of the relu4_1 difference to the content, and the summed L2 norms of the mean
        and Gram differences to the style at relu1_1..relu4_1 (the losses' differences, as norms)."""
        out, content_feats, style_feats = self._measured(content, style, loss_net)
        style_error = sum(mean_gram_error(out[tap], style_feats[tap]) for tap in STYLE_TAPS)
        return {"content_error": per_sample_l2(out[CONTENT_TAP] - content_feats[CONTENT_TAP]),
                "style_error": style_error}  # type: ignore[dict-item]

