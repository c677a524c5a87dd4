"""Statistics and transforms against closed forms; losses, errors and the frozen/trainable set-ups."""

from __future__ import annotations

import math

import pytest
import torch

from distst.config import model_section
from distst.models import create, frozen_copy
from distst.models.stats import adain, blend, calc_mean_std, mean_variance_norm, style_error


def test_calc_mean_std_closed_form() -> None:
    # one sample, one channel, values 1..4: mean 2.5, unbiased variance 5/3
    feat = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    mean, std = calc_mean_std(feat)
    assert mean.shape == (1, 1, 1, 1)
    assert mean.item() == pytest.approx(2.5)
    assert std.item() == pytest.approx(math.sqrt(5 / 3 + 1e-5), rel=1e-6)


def test_calc_mean_std_eps_matters_for_constant_channels() -> None:
    _, std = calc_mean_std(torch.full((2, 3, 4, 4), 7.0))
    assert torch.allclose(std, torch.full_like(std, math.sqrt(1e-5)))


def test_adain_closed_form() -> None:
    content = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    style = torch.tensor([10.0, 10.0, 20.0, 20.0]).view(1, 1, 2, 2)
    c_mean, c_std = 2.5, math.sqrt(5 / 3 + 1e-5)
    s_mean, s_std = 15.0, math.sqrt(100 / 3 + 1e-5)  # unbiased var of (10,10,20,20) = 100/3
    expected = (content - c_mean) / c_std * s_std + s_mean
    assert torch.allclose(adain(content, style), expected, atol=1e-5)


def test_adain_output_has_style_statistics() -> None:
    content, style = torch.randn(2, 8, 6, 6) * 3 + 1, torch.randn(2, 8, 5, 7) * 0.5 - 2
    out_mean, out_std = calc_mean_std(adain(content, style))
    s_mean, s_std = calc_mean_std(style)
    assert torch.allclose(out_mean, s_mean, atol=1e-5)
    assert torch.allclose(out_std, s_std, atol=1e-3)


def test_mean_variance_norm_gives_zero_mean() -> None:
    mean, _ = calc_mean_std(mean_variance_norm(torch.randn(3, 4, 5, 5) * 4 + 3))
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)


def test_blend_alpha_zero_gives_content_back() -> None:
    content, styled = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    assert torch.equal(blend(styled, content, 0.0), content)
    assert torch.equal(blend(styled, content, 1.0), styled)
    with pytest.raises(ValueError, match="alpha"):
        blend(styled, content, 1.5)


def test_adain_model_alpha_zero_decodes_content_features() -> None:
    model = create(model_section(name="adain", width=0.125)).eval()
    content, style = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        features = model.stylize_features(model.encoder(content), model.encoder(style), alpha=0.0)
        assert torch.equal(features, model.encoder(content)[-1])
        assert torch.equal(model(content, style, alpha=0.0), model.decoder(model.encoder(content)[-1]))


def test_style_error_is_zero_for_identical_features_and_l2_otherwise() -> None:
    feats = [torch.randn(2, 4, 6, 6)]
    assert torch.equal(style_error(feats, feats), torch.zeros(2))
    shifted = [feats[0] + 3.0]  # mean moves by 3 in each of 4 channels, std unchanged
    assert torch.allclose(style_error(shifted, feats), torch.full((2,), 6.0), atol=1e-4)


@pytest.mark.parametrize("name", ["adain", "sanet"])
def test_loss_terms_and_errors_are_finite(name: str) -> None:
    model = create(model_section(name=name, width=0.125))
    loss_net = frozen_copy(model.encoder)
    content, style = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    terms = model.loss_terms(content, style, loss_net)
    assert set(terms) == set(model.loss_weights())
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    errors = model.errors(content, style, loss_net)
    assert all(e.shape == (2,) and torch.all(e >= 0) for e in errors.values())


def test_frozen_encoder_gets_no_gradient_but_trainable_does() -> None:
    content, style = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    for setting, expect_grad in (("frozen", False), ("trainable", True)):
        model = create(model_section(name="adain", width=0.125, encoder=setting))
        loss_net = frozen_copy(model.encoder)
        sum(model.loss_terms(content, style, loss_net).values()).backward()
        assert (model.encoder[2].weight.grad is not None) == expect_grad
        assert model.decoder[1].weight.grad is not None
        assert all(p.grad is None and not p.requires_grad for p in loss_net.parameters())


@pytest.mark.parametrize("name", ["sanet", "mccnet"])
def test_identity_models_errors_through_forward_calls_equal_the_training_pass(name: str,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """errors() stylise through whole forward calls (so an exported graph can answer them); the numbers are
    exactly those of the training pass, which reuses the encoder's features."""
    model = create(model_section(name=name, width=0.125)).eval()
    loss_net = model.loss_network()
    content, style = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        through_forward = model.errors(content, style, loss_net)
        monkeypatch.setattr(model, "forward_pass", model.identity_pass)
        training_pass = model.errors(content, style, loss_net)
    assert set(through_forward) == {"content_error", "style_error", "identity_error"}
    assert all(torch.equal(through_forward[k], training_pass[k]) for k in through_forward)
