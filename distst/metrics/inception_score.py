"""The Inception Score (Salimans et al., 2016) of generated images: ``exp(E_x KL(p(y|x) || p(y)))``, over ``splits``
equal parts of the set (mean and standard deviation across them), as the original code and the GAN papers that
report it (SNGAN, the GAN lottery tickets: 50,000 images, 10 splits). Class predictions come from an extractor
with ``logits`` (``extractors.py``): pytorch-fid's Inception file holds the 1008-way classifier of the graph the
original code used.

It ranges from 1 (every image predicted alike, or every prediction uniform) to the number of classes (each
prediction certain, the classes used equally).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def inception_score(logits: Tensor | np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Mean and standard deviation over ``splits`` parts (consecutive, equal up to one image) of the Inception
    Score of the N x classes ``logits`` (float64 throughout)."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    if logits.dim() != 2 or len(logits) < splits or splits < 1:
        raise ValueError(f"the Inception Score needs N x classes logits with N >= splits={splits}, got shape "
                         f"{tuple(logits.shape)}")
    scores = []
    for part in torch.tensor_split(logits, splits):
        log_p = torch.log_softmax(part, dim=1)  # log p(y|x), stable for confident predictions
        log_marginal = torch.logsumexp(log_p, dim=0) - np.log(len(part))  # log p(y) over the part
        kl = (log_p.exp() * (log_p - log_marginal)).sum(dim=1)
        scores.append(float(kl.mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))
