"""The one interface every style-transfer model implements: encoder / transform / decoder.

Pruning methods address the groups by name (``model.groups()``); the trainer only calls ``loss_terms``
and ``errors``; nothing outside a model's own module special-cases it.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import ClassVar

from torch import Tensor, nn

from .decoder import Decoder
from .vgg import VGGEncoder


class StyleTransferModel(nn.Module, metaclass=ABCMeta):
    name: ClassVar[str]
    encoder_depth: ClassVar[str]
    # Height and width of inputs must be multiples of this (1: any size).
    input_multiple: ClassVar[int] = 1
    # Smallest height/width: the deepest reflection pad needs at least 2 pixels.
    min_size: ClassVar[int] = 16

    def __init__(self, encoder: VGGEncoder, transform: nn.Module, decoder: Decoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.transform = transform
        self.decoder = decoder

    def groups(self) -> dict[str, nn.Module]:
        """The named parts that pruning, counting and freezing address."""
        return {"encoder": self.encoder, "transform": self.transform, "decoder": self.decoder}

    def check_input(self, *images: Tensor) -> None:
        for image in images:
            if image.dim() != 4 or image.shape[1] != 3:
                raise ValueError(f"{self.name} expects N x 3 x H x W images in [0, 1], got shape {tuple(image.shape)}")
            h, w = image.shape[-2:]
            if min(h, w) < self.min_size:
                raise ValueError(f"{self.name} needs images of at least {self.min_size}x{self.min_size}, got {h}x{w}")
            m = self.input_multiple
            if h % m or w % m:
                raise ValueError(
                    f"{self.name} needs image height and width that are multiples of {m}, got {h}x{w}; "
                    f"resize or crop to e.g. {max(m, h // m * m)}x{max(m, w // m * m)}"
                )

    @abstractmethod
    def stylize_features(self, content_feats: list[Tensor], style_feats: list[Tensor], alpha: float) -> Tensor:
        """The decoder's input from the encoder's features of content and style."""

    def forward(self, content: Tensor, style: Tensor, alpha: float = 1.0) -> Tensor:
        self.check_input(content, style)
        return self.decoder(self.stylize_features(self.encoder(content), self.encoder(style), alpha))

    @abstractmethod
    def loss_terms(self, content: Tensor, style: Tensor, loss_net: VGGEncoder) -> dict[str, Tensor]:
        """Unweighted training loss terms (scalars), computed with the frozen ``loss_net``."""

    def loss_weights(self, train: object) -> dict[str, float]:
        """Weights of ``loss_terms`` from the ``train`` config section."""
        return {"content": train.content_weight, "style": train.style_weight}  # type: ignore[attr-defined]

    @abstractmethod
    def errors(self, content: Tensor, style: Tensor, loss_net: VGGEncoder) -> dict[str, Tensor]:
        """Per-pair evaluation errors (L2 norms, shape N) of the lottery-ticket paper, with ``loss_net``."""
