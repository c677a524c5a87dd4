"""distst's own FID/KID against independent implementations on fixed features (float64): pytorch-fid's
``calculate_frechet_distance`` and torchmetrics' FrechetInceptionDistance / KernelInceptionDistance fed through a
custom feature module (which downloads nothing), and against closed forms. Why distst keeps its own: docs/metrics.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from distst.metrics import frechet_distance, gaussian_stats, kernel_inception_distance

pytestmark = pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated")  # pytorch-fid's sqrtm call


class Given(nn.Module):
    """A "feature extractor" that returns its input: feeds fixed features to torchmetrics' metrics."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.num_features = dims  # torchmetrics then skips its dummy forward pass

    def forward(self, features: Tensor) -> Tensor:
        return features


def _features(n: int, d: int, seed: int, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / d ** 0.5  # correlated features, full covariances
    return (rng.normal(size=(n, d)) @ mixing + offset,
            1.2 * rng.normal(size=(n, d)) @ mixing + 0.3 + offset)


@pytest.mark.parametrize(("n", "d", "offset"), [(500, 64, 0.0), (2000, 256, 0.0), (2000, 256, 100.0)])
def test_fid_equals_pytorch_fid_and_torchmetrics_on_fixed_features(n: int, d: int, offset: float) -> None:
    real, fake = _features(n, d, seed=d, offset=offset)
    ours = frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))
    assert ours == pytest.approx(calculate_frechet_distance(*gaussian_stats(real), *gaussian_stats(fake)), rel=1e-9)
    metric = FrechetInceptionDistance(feature=Given(d), normalize=True, sync_on_compute=False)
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    assert ours == pytest.approx(float(metric.compute()), rel=1e-9)  # measured: ~1e-14 (docs/metrics.md)


def test_fid_with_singular_covariances_agrees_with_pytorch_fid() -> None:
    real, fake = _features(100, 256, seed=7)  # fewer samples than dimensions: both covariances singular
    ours = frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))
    assert ours == pytest.approx(calculate_frechet_distance(*gaussian_stats(real), *gaussian_stats(fake)), rel=1e-6)


def test_fid_of_identical_sets_is_zero() -> None:
    real, _ = _features(300, 32, seed=1)
    stats = gaussian_stats(real)
    assert abs(frechet_distance(*stats, *stats)) < 1e-9 * np.trace(stats[1])
    assert abs(calculate_frechet_distance(*stats, *stats)) < 1e-9 * np.trace(stats[1])


def test_fid_of_gaussians_with_commuting_full_covariances_is_the_closed_form() -> None:
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T: (S1 S2)^(1/2) = Q diag(sqrt(ab)) Q^T, so
    FID = ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2, with neither covariance diagonal."""
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    a, b = rng.uniform(0.1, 4.0, size=8), rng.uniform(0.1, 4.0, size=8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)
    assert calculate_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save all extracted features")
def test_kid_on_whole_sets_equals_torchmetrics() -> None:
    real, fake = _features(200, 32, seed=2)
    metric = KernelInceptionDistance(feature=Given(32), subsets=2, subset_size=200, sync_on_compute=False)
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    state = torch.random.get_rng_state()
    with torch.random.fork_rng():  # torchmetrics draws its subsets from torch's global generator
        theirs, their_std = (float(v) for v in metric.compute())
    assert torch.equal(state, torch.random.get_rng_state())
    ours, std = kernel_inception_distance(real, fake, subsets=2, subset_size=200)  # every subset: the whole set
    assert ours == pytest.approx(theirs, rel=1e-9)  # measured: ~4e-15 (docs/metrics.md)
    assert std == pytest.approx(0.0, abs=1e-12) and their_std == pytest.approx(0.0, abs=1e-12)  # subsets alike
