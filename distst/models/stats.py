"""Channel statistics shared by the models and the losses (one definition, as the references use)."""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-5


def calc_mean_std(feat: Tensor, eps: float = EPS) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and std of an N x C x H x W tensor.

    As the AdaIN/SANet references: the *unbiased* variance plus ``eps``, then the square root.
    """
    if feat.dim() != 4:
        raise ValueError(f"calc_mean_std expects N x C x H x W features, got shape {tuple(feat.shape)}")
    n, c = feat.shape[:2]
    flat = feat.reshape(n, c, -1)
    std = (flat.var(dim=2) + eps).sqrt().view(n, c, 1, 1)
    mean = flat.mean(dim=2).view(n, c, 1, 1)
    return mean, std


def mean_variance_norm(feat: Tensor) -> Tensor:
    mean, std = calc_mean_std(feat)
    return (feat - mean) / std


def adain(content_feat: Tensor, style_feat: Tensor) -> Tensor:
    """Adaptive instance normalisation: content statistics replaced by the style's."""
    if content_feat.shape[:2] != style_feat.shape[:2]:
        raise ValueError(f"adain needs matching N x C, got {tuple(content_feat.shape)} and {tuple(style_feat.shape)}")
    style_mean, style_std = calc_mean_std(style_feat)
    return mean_variance_norm(content_feat) * style_std + style_mean


def blend(stylized: Tensor, content: Tensor, alpha: float) -> Tensor:
    """alpha * stylized + (1 - alpha) * content (alpha=1: full style, 0: content features back)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if alpha == 1.0:
        return stylized
    return alpha * stylized + (1.0 - alpha) * content


def mean_std_distance(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(mean_a - mean_b, std_a - std_b), the quantities style losses and errors are made of."""
    mean_a, std_a = calc_mean_std(a)
    mean_b, std_b = calc_mean_std(b)
    return mean_a - mean_b, std_a - std_b


def per_sample_l2(x: Tensor) -> Tensor:
    """The L2 norm of each sample's flattened tensor (shape N)."""
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)


def mean_std_loss(out: Tensor, ref: Tensor) -> Tensor:
    """The references' style loss at one layer: MSE of channel means plus MSE of channel stds."""
    out_mean, out_std = calc_mean_std(out)
    ref_mean, ref_std = calc_mean_std(ref)
    return torch.nn.functional.mse_loss(out_mean, ref_mean) + torch.nn.functional.mse_loss(out_std, ref_std)


def style_loss(out_feats: list[Tensor], style_feats: list[Tensor]) -> Tensor:
    return sum(mean_std_loss(o, s) for o, s in zip(out_feats, style_feats, strict=True))  # type: ignore[return-value]


def style_error(out_feats: list[Tensor], style_feats: list[Tensor]) -> Tensor:
    """Sum over layers of ||mu_out - mu_style||_2 + ||sigma_out - sigma_style||_2, per sample (shape N)."""
    total = torch.zeros(out_feats[0].shape[0], device=out_feats[0].device)
    for out, ref in zip(out_feats, style_feats, strict=True):
        d_mean, d_std = mean_std_distance(out, ref)
        total = total + per_sample_l2(d_mean) + per_sample_l2(d_std)
    return total
