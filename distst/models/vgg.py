"""The VGG-19 'normalised' encoder in the exact layout of the reference ``vgg_normalised.pth``.

The reference file is a 53-module ``nn.Sequential``: a leading 1x1 conv 3->3 (it maps RGB in [0, 1] to the
Caffe input space), reflection padding before every 3x3 conv, ceil-mode max pooling. Models slice it at
relu4_1 (AdaIN) or relu5_1 (SANet). Conv widths come from a channel plan keyed by VGG layer name
(``conv1_1`` ... ``conv5_4``); the reference plan is VGG-19's.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..weights import WeightsError, load_checked, read_state_dict
from .plan import scale_plan

# Conv widths of VGG-19; "M" is a max pool.
VGG19_PLAN: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                     512, 512, 512, 512, "M", 512, 512, 512, 512)
# Index (in the 53-module layout) of the ReLU whose output each tap is.
TAPS = {"relu1_1": 3, "relu2_1": 10, "relu3_1": 17, "relu4_1": 30, "relu5_1": 43}
FULL_LENGTH = 53
# torchvision's vgg19().features conv indices, in order, and where they sit in our layout.
_TORCHVISION_CONVS = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv_names() -> list[str]:
    """``conv1_1``, ``conv1_2``, ``conv2_1`` ... in order: block number, then position in the block."""
    names, block, position = [], 1, 0
    for item in VGG19_PLAN:
        if item == "M":
            block, position = block + 1, 0
            continue
        position += 1
        names.append(f"conv{block}_{position}")
    return names


CONV_NAMES: tuple[str, ...] = tuple(_conv_names())
REFERENCE_WIDTHS: dict[str, int] = dict(zip(CONV_NAMES, (c for c in VGG19_PLAN if c != "M"), strict=True))
# The last conv of each slice (its output is the tap).
LAST_CONV = {"relu1_1": "conv1_1", "relu2_1": "conv2_1", "relu3_1": "conv3_1", "relu4_1": "conv4_1",
             "relu5_1": "conv5_1"}


def convs_up_to(depth: str) -> tuple[str, ...]:
    """The conv layers of the encoder sliced at ``depth`` (``relu4_1``: conv1_1 ... conv4_1)."""
    return CONV_NAMES[: CONV_NAMES.index(LAST_CONV[depth]) + 1]


def reference_plan(depth: str) -> dict[str, int]:
    return {name: REFERENCE_WIDTHS[name] for name in convs_up_to(depth)}


def vgg_normalised_layers(width: float = 1.0, widths: Mapping[str, int] | None = None) -> list[nn.Module]:
    """The 53 modules of the reference ``vgg_normalised`` network; conv widths from ``widths`` (by layer name)
    where given, else the reference widths scaled by ``width``."""
    plan = {**scale_plan({"vgg": REFERENCE_WIDTHS}, width)["vgg"], **(widths or {})}
    layers: list[nn.Module] = [nn.Conv2d(3, 3, (1, 1))]
    in_ch, names = 3, iter(CONV_NAMES)
    for item in VGG19_PLAN:
        if item == "M":
            layers.append(nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True))
            continue
        out_ch = plan[next(names)]
        layers += [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(in_ch, out_ch, (3, 3)), nn.ReLU()]
        in_ch = out_ch
    assert len(layers) == FULL_LENGTH
    return layers


def conv_indices() -> list[int]:
    """Indices of the 16 3x3 convs in the 53-module layout (each follows its reflection pad)."""
    indices, position = [], 1  # module 0 is the leading 1x1 conv
    for item in VGG19_PLAN:
        if item != "M":
            indices.append(position + 1)
        position += 1 if item == "M" else 3
    return indices


class VGGEncoder(nn.Sequential):
    """The reference VGG sliced at ``depth``; calling it returns the features at every tap up to ``depth``.

    A ``nn.Sequential`` so that its state-dict keys are the reference file's (``'0.weight'``, ``'2.weight'``...).
    """

    def __init__(self, depth: str = "relu4_1", width: float = 1.0, widths: Mapping[str, int] | None = None) -> None:
        if depth not in TAPS:
            raise ValueError(f"depth must be one of {', '.join(TAPS)}, got {depth!r}")
        super().__init__(*vgg_normalised_layers(width, widths)[: TAPS[depth] + 1])
        self.depth = depth
        self.width = width
        self.widths = {name: self[i].out_channels for name, i in zip(convs_up_to(depth), conv_indices(), strict=False)}
        self.taps = [index for index in TAPS.values() if index <= TAPS[depth]]
        self.tap_names = [name for name, index in TAPS.items() if index <= TAPS[depth]]

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        feats = []
        for index, layer in enumerate(self):
            x = layer(x)
            if index in self.taps:
                feats.append(x)
        return feats

    @property
    def out_channels(self) -> int:
        return self.widths[LAST_CONV[self.depth]]

    def conv_layers(self) -> dict[str, nn.Conv2d]:
        """This slice's 3x3 convs by VGG layer name."""
        return {name: self[i] for name, i in zip(convs_up_to(self.depth), conv_indices(), strict=False)}

    def load_reference(self, path: str | Path) -> None:
        """Load a full 53-module ``vgg_normalised.pth`` (strictly checked), keeping this slice's layers."""
        state = read_state_dict(path)
        full = nn.Sequential(*vgg_normalised_layers(self.width, self.widths))
        load_checked(full, state, str(path))
        self.load_state_dict({k: v for k, v in state.items() if int(k.split(".")[0]) < len(self)}, strict=True)


def frozen_copy(encoder: VGGEncoder) -> VGGEncoder:
    """A separate, frozen VGG for computing losses: never trained, never in a state dict, never pruned."""
    clone = copy.deepcopy(encoder).eval()
    clone.requires_grad_(False)
    return clone


def convert_torchvision_vgg19(src: str | Path, dst: str | Path) -> Path:
    """Write a ``vgg_normalised.pth``-layout file from a local torchvision VGG-19 state dict file.

    The leading 1x1 conv takes over torchvision's ImageNet normalisation, so inputs stay in [0, 1].
    torchvision pads with zeros where the reference reflects, so features differ slightly at the borders.
    """
    state = read_state_dict(src)
    keys = [f"features.{i}.weight" for i in _TORCHVISION_CONVS]
    missing = [k for k in keys if k not in state]
    if missing:
        raise WeightsError(f"{src} is not a torchvision VGG-19 state dict: missing {missing[:3]}")
    full = nn.Sequential(*vgg_normalised_layers(1.0))
    out = full.state_dict()
    std = torch.tensor(_IMAGENET_STD)
    out["0.weight"] = torch.diag(1.0 / std).view(3, 3, 1, 1)
    out["0.bias"] = -torch.tensor(_IMAGENET_MEAN) / std
    for tv_index, ours in zip(_TORCHVISION_CONVS, conv_indices(), strict=True):
        for kind in ("weight", "bias"):
            value = state[f"features.{tv_index}.{kind}"]
            if value.shape != out[f"{ours}.{kind}"].shape:
                raise WeightsError(f"{src}: features.{tv_index}.{kind} has shape {tuple(value.shape)}, "
                                   f"expected {tuple(out[f'{ours}.{kind}'].shape)} (is it VGG-19?)")
            out[f"{ours}.{kind}"] = value.clone()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, dst)
    return dst


def init_encoder(encoder: VGGEncoder, vgg_weights: str | Path | None) -> None:
    """Pretrained weights from a local ``vgg_normalised.pth``, else a He initialisation."""
    if vgg_weights:
        encoder.load_reference(vgg_weights)
    else:
        random_features_init(encoder)


def random_features_init(encoder: nn.Module) -> None:
    """He (fan-in, ReLU) init for an encoder without pretrained weights.

    PyTorch's default conv init shrinks activations about 3x per layer, so a random VGG's relu4_1 features
    vanish (content losses ~1e-9) and nothing useful is learnt; He init keeps their scale, and random VGG
    features are a known workable basis for style statistics. Only used when no ``vgg_weights`` are given.
    """
    for module in encoder.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)
