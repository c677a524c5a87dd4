"""Evaluation on fixed held-out pairs: the lottery-ticket paper's content and style errors, and image grids.

Errors are L2 norms (not MSE) computed with the frozen loss VGG, averaged over pairs; ``total_error`` (E)
is their sum (for SANet also its identity error). See ``DiststModel.errors`` for each model's terms.

Evaluation runs in fp32 whatever the training precision (``fp32_view``), so "matching" is never decided
by bf16 rounding; under ZeRO-3 every rank takes part in every forward pass (parameters are gathered).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from .images import image_grid, save_image
from .masters import fp32_master, is_partitioned
from .models import DiststModel, VGGEncoder


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """The model with whole parameters on every rank (collective under ZeRO-3; free otherwise)."""
    if not is_partitioned(model):
        yield model
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield model


@contextlib.contextmanager
def fp32_view(model: nn.Module) -> Iterator[nn.Module]:
    """The model with fp32 weights for evaluation: itself when it is fp32 already, else a copy built from the
    optimizer's fp32 master weights (not an upcast of the rounded bf16/fp16 ones). Under ZeRO-3 the model
    itself (its forward gathers the partitions; see README for bf16 there)."""
    if is_partitioned(model) or all(p.dtype == torch.float32 for p in model.parameters()):
        yield model
        return
    memo = {id(p): nn.Parameter(fp32_master(p), requires_grad=False) for p in model.parameters()}
    copy_ = copy.deepcopy(model, memo).float()
    yield copy_


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


def stylized_grid(model: DiststModel, content: Tensor, style: Tensor, path: Path | None,
                  batch_size: int = 8) -> Path | None:
    """A PNG with one row per pair: content | style | stylized. Every rank computes it (ZeRO-3 forwards are
    collective); only a rank given a ``path`` writes it."""
    tiles = torch.stack([content, style, stylize_pairs(model, content, style, batch_size)], dim=1)
    grid = image_grid(tiles.flatten(0, 1).clamp(0, 1).cpu(), nrow=3, padding=2, pad_value=1.0)
    return save_image(grid, path) if path is not None else None
