"""FID and KID, computed here from features (numpy, float64). pytorch-fid, torch-fidelity and clean-fid download
their Inception weights at run time (fails offline); torchmetrics, fed our extractor, gives the same numbers but
seeds KID's subsets from torch's global generator (breaks bitwise resume) among other traps: docs/metrics.md,
with the parity measured by tests/unit/test_fid_parity.py. The features come from an injectable extractor
(``extractors.py``); with the pytorch-fid Inception file the numbers are those of the TTUR/pytorch-fid
implementations.

FID (Heusel et al. 2017): ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between Gaussians fitted to
the two feature sets. ``Tr((S1 S2)^(1/2))`` is taken as the sum of the square roots of the eigenvalues of
the symmetric ``S1^(1/2) S2 S1^(1/2)`` (same eigenvalues as ``S1 S2``): exact for PSD matrices and free of
the complex round-off ``scipy.linalg.sqrtm`` of the non-symmetric product can show.

KID (Binkowski et al. 2018): the unbiased MMD^2 estimate with the polynomial kernel
``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets (mean and standard deviation).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of N x D features, in float64."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"need at least 2 feature vectors (N x D), got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different dimensions: {mu1.shape} / {sigma1.shape} vs {mu2.shape} / "
                         f"{sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two samples with k(a, b) = (a.b / d + 1)^3."""
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased polynomial-kernel MMD^2 over ``subsets`` random subsets
    of ``min(subset_size, len(real), len(fake))`` vectors of each set (drawn without replacement, seeded)."""
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 feature vectors per set, got {len(real)} and {len(fake)}")
    rng = np.random.default_rng(seed)
    values = [_polynomial_mmd2(real[rng.choice(len(real), size, replace=False)],
                               fake[rng.choice(len(fake), size, replace=False)]) for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


@torch.no_grad()
def extract(extractor: nn.Module, images: Tensor, batch_size: int = 32) -> np.ndarray:
    """Features of N x 3 x H x W images in [0, 1], in batches on the extractor's device: N x D float64."""
    device = next(iter(extractor.parameters()), torch.empty(0)).device
    extractor.eval()
    chunks = [extractor(images[i:i + batch_size].to(device, torch.float32)).double().cpu()
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).numpy()


def set_scores(extractor: nn.Module, real: Tensor, fake: Tensor, batch_size: int = 32) -> dict[str, float]:
    """FID and KID (with its standard deviation over subsets) of generated images ``fake`` against ``real``."""
    real_feats, fake_feats = extract(extractor, real, batch_size), extract(extractor, fake, batch_size)
    fid = frechet_distance(*gaussian_stats(real_feats), *gaussian_stats(fake_feats))
    kid, kid_std = kernel_inception_distance(real_feats, fake_feats)
    return {"fid": fid, "kid": kid, "kid_std": kid_std}
