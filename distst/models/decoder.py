"""The reference AdaIN/SANet decoder: a mirror of VGG up to relu4_1 with nearest upsampling."""

from __future__ import annotations

from torch import nn

from .vgg import scaled

# (in, out) of each 3x3 conv, "U" a 2x nearest upsample; the same for AdaIN and SANet.
DECODER_PLAN: tuple[tuple[int, int] | str, ...] = (
    (512, 256), "U", (256, 256), (256, 256), (256, 256), (256, 128), "U", (128, 128), (128, 64), "U",
    (64, 64), (64, 3),
)


class Decoder(nn.Sequential):
    """A ``nn.Sequential`` whose state-dict keys are those of the reference ``decoder.pth``."""

    def __init__(self, width: float = 1.0) -> None:
        layers: list[nn.Module] = []
        for index, item in enumerate(DECODER_PLAN):
            if item == "U":
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
                continue
            c_in, c_out = item
            last = index == len(DECODER_PLAN) - 1
            layers += [nn.ReflectionPad2d((1, 1, 1, 1)),
                       nn.Conv2d(scaled(c_in, width), c_out if last else scaled(c_out, width), (3, 3))]
            if not last:
                layers.append(nn.ReLU())
        super().__init__(*layers)
