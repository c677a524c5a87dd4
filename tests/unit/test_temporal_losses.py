"""The temporal stability losses against hand computations, and the options' contracts (what they refuse)."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_config

from distst.config import ConfigError, model_section
from distst.models import build
from distst.models.mccnet import NOISE_STD_RANGE
from distst.stability import TemporalLosses, with_temporal_losses
from distst.train.hooks import StepInputs, TrainContext
from distst.video.flow import warp
from distst.video.stability import compound_regularisation, noise_stability, random_motion


def test_noise_stability_is_the_mse_to_the_output_of_the_noisy_content() -> None:
    content = torch.rand(2, 3, 8, 8)
    double = lambda x: 2 * x  # noqa: E731 - a linear "stylizer": its noisy output differs by 2 * noise
    torch.manual_seed(3)
    loss = noise_stability(double, content, double(content), (0.01, 0.02))
    torch.manual_seed(3)
    std = 0.01 + 0.01 * torch.rand(())  # the same draws, in the same order: the std, then the noise
    noise = std * torch.randn_like(content)
    assert torch.allclose(loss, (2 * noise).square().mean(), rtol=1e-6)


def test_compound_regularisation_of_an_offset_stylizer_is_the_mean_absolute_noise_where_the_warp_stays_inside() -> None:
    content = torch.rand(1, 3, 12, 12)
    offset = lambda x: x + 0.25  # noqa: E731 - commutes with any warp inside the image
    flow = torch.zeros(1, 2, 12, 12)
    flow[:, 0] = 3.0  # every pixel reads 3 to its right: the last 3 columns fall outside
    noise = torch.randn(1, 3, 12, 12) * 0.01
    loss = compound_regularisation(offset, content, offset(content), flow, noise)
    assert torch.allclose(loss, noise[..., :, :9].abs().mean(), rtol=1e-5)
    assert compound_regularisation(lambda x: x, content, content, flow, torch.zeros_like(content)) == 0


def test_compound_regularisation_penalises_a_stylizer_that_does_not_move_with_the_content() -> None:
    content = torch.rand(1, 3, 16, 16)
    fixed = torch.rand(1, 3, 16, 16)
    pinned = lambda x: fixed + 0 * x  # noqa: E731 - ignores the motion: its output never moves
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 1] = 2.0
    expected = (warp(fixed, flow) - fixed)[..., :14, :].abs().mean()
    assert torch.allclose(compound_regularisation(pinned, content, fixed, flow, torch.zeros_like(content)), expected)


def test_random_motion_is_a_smooth_field_plus_a_bounded_integer_shift_drawn_from_torchs_rng() -> None:
    content = torch.rand(3, 3, 32, 32)
    torch.manual_seed(0)
    a = random_motion(content, 0.0, 4)
    assert a.shape == (3, 2, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, a.round()) and a.abs().max() <= 4
    assert (a == a[..., :1, :1]).all(), "no motion: one shift per sample and axis"
    torch.manual_seed(0)
    assert torch.equal(random_motion(content, 0.0, 4), a), "seeded: a resumed run draws the same motion"
    smooth = random_motion(content, 2.0, 0)
    assert 0 < smooth.abs().max() <= 2.0 + 1e-5


def _inputs(model, batch) -> StepInputs:  # noqa: ANN001
    model.features.want({"output"}, model)
    model(*batch)
    return StepInputs("main", batch, model.features.take())


def test_the_method_adds_named_weighted_terms_and_its_passes_leave_no_features(tmp_path) -> None:  # noqa: ANN001
    cfg = tiny_config(tmp_path, temporal__noise_weight=2.0, temporal__compound_weight=3.0)
    model = build(cfg.model)
    method = with_temporal_losses(None, cfg)
    assert isinstance(method, TemporalLosses)
    method.prepare_model(model, cfg)
    batch = (torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    inputs = _inputs(model, batch)
    ctx = TrainContext(cfg=cfg, model=model, workdir=tmp_path, dist=None)  # type: ignore[arg-type]
    torch.manual_seed(1)
    losses = method.extra_losses(ctx, inputs)
    assert set(losses) == {"temporal/noise", "temporal/compound"}
    assert model.features.take() == {}, "the losses' own forward passes are nobody's features"
    torch.manual_seed(1)
    stylize = lambda x: model(x, batch[1])  # noqa: E731
    output = inputs.features["output"][0]
    noise = noise_stability(stylize, batch[0], output, cfg.temporal.noise_std)
    assert torch.allclose(losses["temporal/noise"], 2.0 * noise)
    losses["temporal/compound"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())


def test_off_by_default_and_absent_from_the_config_hash(tmp_path) -> None:  # noqa: ANN001
    cfg = tiny_config(tmp_path)
    assert with_temporal_losses(None, cfg) is None
    assert "temporal" not in cfg.model_dump(mode="json")
    assert "temporal" in tiny_config(tmp_path, temporal__eval_clips=0).model_dump(mode="json")


def test_mccnet_keeps_its_own_noise_term_and_refuses_a_second_one(tmp_path) -> None:  # noqa: ANN001
    cfg = tiny_config(tmp_path, model__name="mccnet", temporal__noise_weight=1.0)
    with pytest.raises(ConfigError, match="model.noise_weight=3000"):
        TemporalLosses(cfg.temporal).prepare_model(build(cfg.model), cfg)
    off = tiny_config(tmp_path, model__name="mccnet", model__noise_weight=0.0, temporal__noise_weight=1.0)
    TemporalLosses(off.temporal).prepare_model(build(off.model), off)
    assert NOISE_STD_RANGE == tuple(off.temporal.noise_std), "the option's default range is MCCNet's reference"


def test_a_model_that_is_not_a_style_transfer_model_is_refused(tmp_path) -> None:  # noqa: ANN001
    cfg = tiny_config(tmp_path, model__name="cyclegan", temporal__compound_weight=1.0)
    with pytest.raises(ConfigError, match="not a style-transfer model"):
        TemporalLosses(cfg.temporal).prepare_model(build(model_section(name="cyclegan")), cfg)


def test_a_reversed_noise_range_is_refused(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="temporal.noise_std"):
        tiny_config(tmp_path, temporal__noise_std=[0.02, 0.01])
