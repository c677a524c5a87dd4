"""The reference AdaIN/SANet decoder: a mirror of VGG up to relu4_1 with nearest upsampling.

Its convs are named by the encoder layer they mirror: decoder ``conv3_4`` (the first, 512 -> 256) outputs as
many channels as encoder ``conv3_4``, so a mirrored plan gives both the same widths (as mirrored channel pruning
needs); the final RGB conv is not resizable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from torch import nn

# Resizable convs in order ("U": a 2x nearest upsample); a final conv maps to RGB.
DECODER_LAYOUT: tuple[str, ...] = (
    "conv3_4", "U", "conv3_3", "conv3_2", "conv3_1", "conv2_2", "U", "conv2_1", "conv1_2", "U", "conv1_1",
)
REFERENCE_WIDTHS: dict[str, int] = {"conv3_4": 256, "conv3_3": 256, "conv3_2": 256, "conv3_1": 256,
                                    "conv2_2": 128, "conv2_1": 128, "conv1_2": 64, "conv1_1": 64}


def decoder_layers(layout: Sequence[str], in_channels: int, widths: Mapping[str, int]) -> list[nn.Module]:
    """Pad, conv, ReLU for each resizable conv of ``layout`` (its output width from ``widths``), a 2x nearest
    upsample for each "U"."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for item in layout:
        if item == "U":
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            continue
        layers += [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(c_in, widths[item], (3, 3)), nn.ReLU()]
        c_in = widths[item]
    return layers


def rgb_layers(in_channels: int) -> list[nn.Module]:
    """The final (not resizable) conv to RGB."""
    return [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(in_channels, 3, (3, 3))]


def named_convs(modules: Iterable[nn.Module]) -> dict[str, nn.Conv2d]:
    """The convs among ``modules``, in order, by mirrored name, then ``rgb``."""
    convs = [m for m in modules if isinstance(m, nn.Conv2d)]
    names = [n for n in DECODER_LAYOUT if n != "U"] + ["rgb"]
    return dict(zip(names, convs, strict=True))


class Decoder(nn.Sequential):
    """A ``nn.Sequential`` whose state-dict keys are those of the reference ``decoder.pth``."""

    def __init__(self, in_channels: int, widths: Mapping[str, int]) -> None:
        super().__init__(*decoder_layers(DECODER_LAYOUT, in_channels, widths), *rgb_layers(widths[DECODER_LAYOUT[-1]]))

    def conv_layers(self) -> dict[str, nn.Conv2d]:
        """The resizable convs by mirrored name, then ``rgb``."""
        return named_convs(self)
