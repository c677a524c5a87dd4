"""Channel importance: how a prune step scores the output channels of the layers it cuts.

Torch-Pruning's ``Importance`` protocol (a callable object that scores channels), so a new score is one class
and any schedule can use it. Ours score one layer's own channels (the selector then sums a coupled set's
members): Torch-Pruning's ``MagnitudeImportance(p=2)`` scores a whole dependency group instead (the next
layer's input weights too, normalised), which would change the published rankings these methods reproduce.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from ...models import DiststModel
from .surgery import LayerKey


class Importance(Protocol):
    def __call__(self, model: DiststModel, layers: list[LayerKey]) -> dict[LayerKey, Tensor]:
        """A score per output channel of each of ``layers`` (higher: more important)."""


def _module(model: DiststModel, key: LayerKey) -> nn.Module:
    return model.channel_layers()[key[0]][key[1]]


class FilterNorm:
    """The Lp norm of each output filter (weights only: a bias is not a filter). ``p=2``: filter L2."""

    def __init__(self, p: float = 2.0) -> None:
        self.p = p

    def __call__(self, model: DiststModel, layers: list[LayerKey]) -> dict[LayerKey, Tensor]:
        return {key: _module(model, key).weight.detach().flatten(1).norm(p=self.p, dim=1) for key in layers}


class ScaleMagnitude:
    """|scale| of each channel's trained slimming scale (ICCP: ``scales.pt`` of the last sparsify stage)."""

    def __init__(self, scales_file: Path) -> None:
        self.scales_file = scales_file

    def __call__(self, model: DiststModel, layers: list[LayerKey]) -> dict[LayerKey, Tensor]:
        saved = torch.load(self.scales_file, weights_only=True)
        return {key: saved[f"{key[0]}.{key[1]}"].abs() for key in layers}


class ResponseNorm:
    """Each channel's response L2 at an encoder tap, summed over images (CPST: relu4_1 on held-out images)."""

    def __init__(self, images: Tensor, tap: str) -> None:
        self.images, self.tap = images, tap

    @torch.no_grad()
    def __call__(self, model: DiststModel, layers: list[LayerKey]) -> dict[LayerKey, Tensor]:
        model.eval()
        feats = model.encoder(self.images)[model.encoder.tap_names.index(self.tap)]
        score = feats.flatten(2).norm(dim=2).sum(dim=0)
        return dict.fromkeys(layers, score)
