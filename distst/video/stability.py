"""The temporal stability losses as functions of a stylising callable (``losses`` makes them a ``Method``; MCCNet's
own noise term calls ``noise_stability``). Pure torch: models import this module."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .flow import in_bounds_mask, smooth_random_flow, warp

Stylize = Callable[[Tensor], Tensor]


def noise_stability(stylize: Stylize, content: Tensor, output: Tensor, std_range: tuple[float, float]) -> Tensor:
    """MSE between ``output`` (the stylised ``content``) and the stylisation of ``content`` plus Gaussian noise
    whose std is drawn uniformly from ``std_range`` (one draw per batch, then the noise: MCCNet's order)."""
    low, high = std_range
    std = low + (high - low) * torch.rand((), device=content.device)
    noisy = content + std * torch.randn_like(content)
    return torch.nn.functional.mse_loss(stylize(noisy), output)


def random_motion(content: Tensor, motion: float, shift: int) -> Tensor:
    """ReReVST's synthetic motion for a batch: one smooth random flow of largest component ``motion`` pixels plus
    a global integer shift in [-shift, shift] per axis, per sample (N x 2 x H x W, float32 whatever the training
    precision: a bf16 flow would be off by up to a pixel at 256 px)."""
    n, _, h, w = content.shape
    flow = smooth_random_flow(n, h, w, motion, device=content.device) if motion > 0 else \
        torch.zeros(n, 2, h, w, device=content.device)
    shifts = torch.randint(-shift, shift + 1, (n, 2, 1, 1), device=content.device)
    return flow + shifts


def compound_regularisation(stylize: Stylize, content: Tensor, output: Tensor, flow: Tensor, noise: Tensor) -> Tensor:
    """Mean absolute difference, over the pixels the warp keeps inside the image, between the warped output and
    the stylisation of the warped content plus ``noise``. Warps run in float32 (the model in its own precision)."""
    moved = stylize((warp(content.float(), flow) + noise.float()).to(content.dtype))
    mask = in_bounds_mask(flow)
    diff = (warp(output.float(), flow) - moved[..., : output.shape[-2], : output.shape[-1]].float()).abs() * mask
    return diff.sum() / (mask.sum() * output.shape[1]).clamp_min(1)
