"""The reference AdaIN/SANet decoder: a mirror of VGG up to relu4_1 with nearest upsampling.

Its convs are named by the encoder layer they mirror: decoder ``conv3_4`` (the first, 512 -> 256) outputs as
many channels as encoder ``conv3_4``, so a mirrored plan gives both the same widths (as mirrored channel pruning
needs); the final RGB conv is not resizable.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

# Resizable convs in order ("U": a 2x nearest upsample); a final conv maps to RGB.
DECODER_LAYOUT: tuple[str, ...] = (
    "conv3_4", "U", "conv3_3", "conv3_2", "conv3_1", "conv2_2", "U", "conv2_1", "conv1_2", "U", "conv1_1",
)
REFERENCE_WIDTHS: dict[str, int] = {"conv3_4": 256, "conv3_3": 256, "conv3_2": 256, "conv3_1": 256,
                                    "conv2_2": 128, "conv2_1": 128, "conv1_2": 64, "conv1_1": 64}


class Decoder(nn.Sequential):
    """A ``nn.Sequential`` whose state-dict keys are those of the reference ``decoder.pth``."""

    def __init__(self, in_channels: int, widths: Mapping[str, int]) -> None:
        layers: list[nn.Module] = []
        c_in = in_channels
        for item in DECODER_LAYOUT:
            if item == "U":
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
                continue
            layers += [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(c_in, widths[item], (3, 3)), nn.ReLU()]
            c_in = widths[item]
        layers += [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(c_in, 3, (3, 3))]
        super().__init__(*layers)

    def conv_layers(self) -> dict[str, nn.Conv2d]:
        """The resizable convs by mirrored name, then ``rgb``."""
        convs = [m for m in self if isinstance(m, nn.Conv2d)]
        names = [n for n in DECODER_LAYOUT if n != "U"] + ["rgb"]
        return dict(zip(names, convs, strict=True))
