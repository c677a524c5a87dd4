"""FID and KID against closed forms, and the feature extractors (injectable; Inception from local files only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from distst.metrics import (
    build_extractor,
    frechet_distance,
    gaussian_stats,
    kernel_inception_distance,
    register_extractor,
    set_scores,
)
from distst.metrics.extractors import (
    _avg_pool_without_padding,
    _tf_pool_branch,
    inception_features,
    inception_network,
)
from distst.weights import WeightsError


def random_features(weights: str | None) -> nn.Module:
    """A small random extractor (16-d): what tests inject instead of Inception."""
    generator = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return net


register_extractor("random", random_features)


def closed_form_fid(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), the square root by scipy's sqrtm."""
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))


def test_fid_of_gaussians_with_diagonal_covariances_is_the_closed_form() -> None:
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()  # 7.25 + 4 + 1 + 0
    assert expected == pytest.approx(12.25)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-12)


def test_fid_of_gaussians_with_full_covariances_matches_scipy_sqrtm() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed_form_fid(mu1, s1, mu2, s2), rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_fid_from_samples_approaches_the_gaussians_fid() -> None:
    rng = np.random.default_rng(1)
    mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, 0.0])
    s1, s2 = np.diag([1.0, 1.0, 1.0]), np.diag([4.0, 1.0, 1.0])  # closed form: 1 + (2 - 1)^2 = 2
    x = rng.multivariate_normal(mu1, s1, size=200_000)
    y = rng.multivariate_normal(mu2, s2, size=200_000)
    assert frechet_distance(*gaussian_stats(x), *gaussian_stats(y)) == pytest.approx(2.0, abs=0.03)


def test_fid_of_a_set_against_itself_is_zero() -> None:
    feats = np.random.default_rng(2).normal(size=(50, 8))
    assert abs(frechet_distance(*gaussian_stats(feats), *gaussian_stats(feats))) < 1e-9
    few = np.random.default_rng(3).normal(size=(5, 20))  # fewer samples than dimensions: a singular covariance
    _, cov = gaussian_stats(few)
    # square roots of round-off-sized eigenvalues: zero up to ~sqrt(eps) of the covariance's scale
    assert abs(frechet_distance(*gaussian_stats(few), *gaussian_stats(few))) < 1e-6 * np.trace(cov)


def _kernel(a: np.ndarray, b: np.ndarray) -> float:
    return float((a @ b / len(a) + 1) ** 3)


def test_kid_of_constant_sets_is_the_kernel_closed_form() -> None:
    a, b = np.array([1.0, 0.0, 2.0]), np.array([0.0, 1.0, -1.0])
    real, fake = np.tile(a, (6, 1)), np.tile(b, (5, 1))
    mean, std = kernel_inception_distance(real, fake, subsets=3)
    assert mean == pytest.approx(_kernel(a, a) + _kernel(b, b) - 2 * _kernel(a, b), rel=1e-12) and std < 1e-12


def test_kid_is_the_unbiased_mmd_written_out() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(7, 4)), rng.normal(loc=0.5, size=(7, 4))
    m = len(x)
    xx = sum(_kernel(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(_kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(_kernel(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, _ = kernel_inception_distance(x, y, subsets=2, subset_size=m)  # every subset is the whole set
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_set_scores_with_an_injected_extractor() -> None:
    extractor = build_extractor("random", None)
    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    same = set_scores(extractor, images, images)
    assert abs(same["fid"]) < 1e-6
    darker = set_scores(extractor, images, images * 0.3)
    assert darker["fid"] > 0.1 and darker["kid"] > same["kid"]


def test_unknown_extractor_and_missing_inception_weights_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown feature extractor 'nope'; registered: .*inception"):
        build_extractor("nope", None)
    with pytest.raises(WeightsError, match=r"model.inception_weights .*pt_inception-2015-12-05"):
        build_extractor("inception", None)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="is not an Inception v3 state dict"):
        build_extractor("inception", tmp_path / "other.pth")


def test_tf_fid_blocks_pool_without_padding_in_the_pool_branch_only() -> None:
    from torchvision.models.inception import InceptionA

    torchvision_block = InceptionA(16, pool_features=8).eval()
    tf_block = _tf_pool_branch(InceptionA, _avg_pool_without_padding)(16, pool_features=8).eval()
    tf_block.load_state_dict(torchvision_block.state_dict())
    x = torch.rand(1, 16, 5, 5) + 1
    with torch.no_grad():
        a, b = torchvision_block(x), tf_block(x)
        pool = tf_block.branch_pool(torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
    assert torch.equal(a[:, :-8], b[:, :-8])  # 1x1, 5x5 and double-3x3 branches untouched
    assert torch.equal(b[:, -8:], pool) and not torch.allclose(a[:, -8:], b[:, -8:])


@pytest.mark.slow
def test_inception_files_of_both_layouts_load_strictly_and_give_2048_features(tmp_path: Path) -> None:
    from torchvision.models.inception import Inception3

    torch.save(inception_network(tf_fid=True).state_dict(), tmp_path / "pt_inception.pth")
    tv = Inception3(num_classes=1000, aux_logits=True, init_weights=False).state_dict()  # torchvision's file keeps aux
    torch.save(tv, tmp_path / "inception_v3_google.pth")
    tf_features = inception_features(str(tmp_path / "pt_inception.pth")).eval()
    assert type(tf_features.network.Mixed_7c).__name__ == "TFInceptionE"
    tv_features = inception_features(str(tmp_path / "inception_v3_google.pth"))
    assert type(tv_features.network.Mixed_7c).__name__ == "InceptionE"
    with torch.no_grad():
        assert tf_features(torch.rand(1, 3, 40, 40)).shape == (1, 2048)
