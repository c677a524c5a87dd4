"""Evaluation on fixed held-out pairs: the lottery-ticket paper's content and style errors, and image grids.

Errors are L2 norms (not MSE) computed with the frozen loss VGG, averaged over pairs; ``total_error`` (E)
is their sum (for SANet also its identity error). See ``DiststModel.errors`` for each model's terms.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import make_grid

from .images import save_image
from .models import DiststModel, VGGEncoder


@torch.no_grad()
def evaluate(model: DiststModel, loss_net: VGGEncoder, content: Tensor, style: Tensor,
             batch_size: int = 8) -> dict[str, float]:
    """Mean of each per-pair error over the held-out pairs, plus ``total_error``."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    for start in range(0, len(content), batch_size):
        errors = model.errors(content[start:start + batch_size], style[start:start + batch_size], loss_net)
        for key, value in errors.items():
            sums[key] = sums.get(key, 0.0) + float(value.sum())
    model.train(was_training)
    means = {key: total / len(content) for key, total in sums.items()}
    means["total_error"] = sum(means.values())
    return means


@torch.no_grad()
def stylize_pairs(model: DiststModel, content: Tensor, style: Tensor, batch_size: int = 8) -> Tensor:
    """Each pair's stylisation in [0, 1], cropped to the content's size (decoders may round sizes up)."""
    was_training = model.training
    model.eval()
    outputs = torch.cat([model(content[i:i + batch_size], style[i:i + batch_size])
                         for i in range(0, len(content), batch_size)])
    model.train(was_training)
    return outputs[..., : content.shape[-2], : content.shape[-1]].clamp(0, 1)


def stylized_grid(model: DiststModel, content: Tensor, style: Tensor, path: Path,
                  batch_size: int = 8) -> Path:
    """A PNG with one row per pair: content | style | stylized."""
    tiles = torch.stack([content, style, stylize_pairs(model, content, style, batch_size)], dim=1)
    return save_image(make_grid(tiles.flatten(0, 1).clamp(0, 1).cpu(), nrow=3, padding=2, pad_value=1.0), path)
