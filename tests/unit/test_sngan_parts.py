"""SNGAN's parts: the reference layouts and exact counts, the hinge losses, the moving average, the noise stream,
spectral norm under pruning masks, what IMP may prune, the Inception Score's closed forms, the cached real-set
statistics, and ``Stage.repeat``'s chunks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from distst.config import ConfigError, build_config, model_section
from distst.metrics import build_extractor, inception_score, reference_stats, stats_key
from distst.models import Stage, create, param_counts
from distst.models import sngan as sngan_module
from distst.models.sngan import (
    SNGAN,
    Discriminator,
    Generator,
    NoiseSource,
    SNConv2d,
    SNProjection,
    hinge_fake,
    hinge_generator,
    hinge_real,
)
from distst.prune.masks import apply_masks, full_masks, prune_magnitude, remaining_target

TINY = {"name": "sngan", "width": 0.0625, "feature_extractor": "random_logits", "fid_images": 4, "is_splits": 2}
# The reference (GAN-LTH src/SNGAN, gf_dim 256, df_dim 128), written out: (name, in, out, kernel) of every conv.
REFERENCE_GENERATOR_CONVS = [(f"block{b}.{c}", 256, 256, k) for b in (2, 3, 4)
                             for c, k in (("c1", 3), ("c2", 3), ("c_sc", 1))] + [("c5", 256, 3, 3)]
REFERENCE_DISCRIMINATOR_CONVS = [("block1.c1", 3, 128, 3), ("block1.c2", 128, 128, 3), ("block1.c_sc", 3, 128, 1),
                                 ("block2.c1", 128, 128, 3), ("block2.c2", 128, 128, 3), ("block2.c_sc", 128, 128, 1),
                                 *[(f"block{b}.{c}", 128, 128, 3) for b in (3, 4) for c in ("c1", "c2")]]


def convs(module: nn.Module) -> list[tuple[str, int, int, int]]:
    return [(name, m.in_channels, m.out_channels, m.kernel_size[0]) for name, m in module.named_modules()
            if isinstance(m, nn.Conv2d)]


def tiny() -> SNGAN:
    torch.manual_seed(0)
    return create(model_section(**TINY))  # type: ignore[return-value]


def test_reference_layouts_and_exact_parameter_counts() -> None:
    plan = SNGAN.reference_plan()
    generator, discriminator = Generator(plan["generator"], 128), Discriminator(plan["discriminator"])
    assert convs(generator) == REFERENCE_GENERATOR_CONVS and convs(discriminator) == REFERENCE_DISCRIMINATOR_CONVS
    assert generator.l1.weight.shape == (4 * 4 * 256, 128) and generator.l1.bias is not None
    assert discriminator.l5.weight.shape == (1, 128) and discriminator.l5.bias is None
    assert sum(p.numel() for p in generator.parameters()) == 4_276_739
    assert sum(m.weight.numel() for m in generator.modules() if isinstance(m, nn.Conv2d)) == 3_742_464
    assert sum(p.numel() for p in discriminator.parameters()) == 1_053_824
    assert sum(isinstance(m, nn.BatchNorm2d) for m in generator.modules()) == 7
    # spectral norm on every discriminator layer, none on the generator
    layers = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d | SNProjection)]
    assert len(layers) == 11 and all(isinstance(m, SNConv2d | SNProjection) for m in layers)
    assert not any(isinstance(m, sngan_module.SpectralNorm) for m in generator.modules())
    model = create(model_section(name="sngan"))
    assert param_counts(model) == {"generator": 4_276_739, "discriminator": 1_053_824, "total": 5_330_563}
    with torch.no_grad():
        images = model(torch.rand(3, 3, 32, 32))
    assert images.shape == (3, 3, 32, 32) and 0 <= float(images.min()) and float(images.max()) <= 1


def test_xavier_uniform_initialisation_and_the_average_starts_at_the_generator() -> None:
    model = tiny()
    conv = model.generator.net.block2.c1
    bound = math.sqrt(6 / ((conv.in_channels + conv.out_channels) * 9))
    largest = float(conv.weight.detach().abs().max())
    assert 0.9 * bound < largest <= bound
    assert torch.equal(model.generator.net.b5.bias, torch.zeros_like(model.generator.net.b5.bias))
    shadow = model.generator.shadow()
    assert all(torch.equal(shadow[n], p) for n, p in model.generator.net.named_parameters())


def test_hinge_losses_match_hand_computations() -> None:
    scores = torch.tensor([[2.0], [0.5], [-0.25], [-3.0]])
    assert float(hinge_real(scores)) == pytest.approx((0 + 0.5 + 1.25 + 4.0) / 4)  # relu(1 - s)
    assert float(hinge_fake(scores)) == pytest.approx((3.0 + 1.5 + 0.75 + 0) / 4)  # relu(1 + s)
    assert float(hinge_generator(scores)) == pytest.approx(-(2 + 0.5 - 0.25 - 3) / 4)


def test_the_moving_average_follows_its_closed_form() -> None:
    model = tiny()
    group = model.generator
    before = {n: t.clone() for n, t in group.shadow().items()}
    with torch.no_grad():
        for p in group.net.parameters():
            p.add_(torch.randn_like(p))
    group.update_ema()
    group.update_ema()
    for name, p in group.net.named_parameters():  # twice towards the same weights w: w + d^2 (e0 - w)
        expected = p + 0.999**2 * (before[name] - p)
        torch.testing.assert_close(group.shadow()[name], expected, rtol=0, atol=1e-6)
    # the evaluated generator is the average: other images than the trained weights give
    z = torch.randn(2, 128)
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(group.generate(z), group.net(z))
        group.reset_ema()
        assert torch.equal(group.generate(z), group.net(z))


def test_noise_comes_from_its_own_checkpointed_stream_one_per_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    source = NoiseSource(8)
    like = torch.zeros(())
    first = source.draw(3, like)
    saved = {k: v.clone() for k, v in source.state_dict().items()}
    second = source.draw(3, like)
    torch.manual_seed(123)  # the global RNG does not matter once the stream runs
    source.load_state_dict(saved)
    assert torch.equal(source.draw(3, like), second) and not torch.equal(first, second)
    torch.manual_seed(0)
    other_rank = NoiseSource(8)
    monkeypatch.setattr(sngan_module, "_rank", lambda: 1)
    assert not torch.equal(other_rank.draw(3, like), first)
    model = tiny()
    assert sorted(model.rank_state()) == [f"generator.noise.{b}" for b in ("draws", "seed", "state")]


def test_spectral_norm_is_torchs_and_keeps_pruned_weights_zero_through_the_power_iteration() -> None:
    torch.manual_seed(0)
    layer = SNConv2d(4, 6, 3, padding=1)
    reference = parametrizations.spectral_norm(nn.Conv2d(4, 6, 3, padding=1))
    with torch.no_grad():
        reference.parametrizations.weight.original.copy_(layer.weight)
        reference.bias.copy_(layer.bias)
        reference.parametrizations.weight[0]._u.copy_(layer.spectral.iteration._u)
        reference.parametrizations.weight[0]._v.copy_(layer.spectral.iteration._v)
    x = torch.randn(2, 4, 5, 5)
    for _ in range(3):  # the same power iterations, step by step: torch.nn.utils.parametrizations' own
        torch.testing.assert_close(layer(x), reference(x))
    # a mask on the original weight (what distst.prune.masks applies) holds through many iterations
    mask = torch.rand(layer.weight.shape) > 0.5
    with torch.no_grad():
        layer.weight.mul_(mask)
    for _ in range(30):
        layer(x)
    normalised = layer.spectral(layer.weight)
    assert not normalised[~mask].any() and not layer.weight[~mask].any() and normalised[mask].all()
    sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
    torch.testing.assert_close(normalised, layer.weight / sigma, rtol=1e-4, atol=1e-6)
    layer.eval()  # evaluation takes no power iteration: u stays
    u = layer.spectral.iteration._u.clone()
    layer(x)
    assert torch.equal(u, layer.spectral.iteration._u)


def test_imp_prunes_only_the_generators_convs_and_a_pruned_discriminator_masks_the_original_weight() -> None:
    model = tiny()
    masks = full_masks(model, ["generator"])
    expected = [f"generator.net.{name}" for name, *_ in REFERENCE_GENERATOR_CONVS]
    assert sorted(masks) == sorted(expected)  # not l1 (the linear layer), not the BN layers
    total = sum(m.numel() for m in masks.values())
    pruned = prune_magnitude(model, masks, 0.2, 1, layerwise=False)
    assert sum(int(m.sum()) for m in pruned.values()) == remaining_target(total, 0.2, 1)
    d_masks = full_masks(model, ["discriminator"])
    assert sorted(d_masks) == sorted(f"discriminator.net.{name}" for name, *_ in REFERENCE_DISCRIMINATOR_CONVS)
    d_pruned = prune_magnitude(model, d_masks, 0.2, 1, layerwise=False)
    apply_masks(model, d_pruned)
    layer = model.discriminator.net.block2.c1
    mask = d_pruned["discriminator.net.block2.c1"]
    assert isinstance(layer.weight, nn.Parameter) and not layer.weight[~mask].any()
    model(torch.rand(2, 3, 32, 32))
    model.stage_losses("discriminator", (torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)), None)
    assert not layer.spectral(layer.weight)[~mask].any()


def test_a_loaded_state_zeroes_the_average_where_the_generator_is_pruned() -> None:
    model = tiny()
    state = model.state_dict()
    mask = torch.rand(state["generator.net.block3.c2.weight"].shape) > 0.3
    state["generator.net.block3.c2.weight"] = state["generator.net.block3.c2.weight"] * mask  # a rewound ticket
    model.load_state_dict(state)
    shadow = model.generator.shadow()["block3.c2.weight"]
    assert not shadow[~mask].any() and torch.equal(shadow[mask], model.generator.net.block3.c2.weight[mask])
    assert torch.equal(model.generator.shadow()["l1.weight"], model.generator.net.l1.weight)


def test_inception_score_closed_forms() -> None:
    classes = 10
    assert inception_score(torch.zeros(50, classes), splits=5) == pytest.approx((1.0, 0.0))  # uniform: 1
    one_hot = torch.full((50, classes), -1e4)
    one_hot[torch.arange(50), torch.arange(50) % classes] = 0.0  # certain and balanced: the class count
    assert inception_score(one_hot, splits=5) == pytest.approx((classes, 0.0))
    same = torch.full((40, classes), -1e4)
    same[:, 3] = 0  # certain but always the same class: 1
    assert inception_score(same, splits=4)[0] == pytest.approx(1.0)
    two = torch.full((40, classes), -1e4)
    two[:, :2] = 0.0  # every prediction 1/2 on two classes, so is the marginal: 1
    assert inception_score(two, 2)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="N >= splits=10"):
        inception_score(torch.zeros(5, 3))
    extractor = build_extractor("random_logits", None)
    logits = extractor.logits(extractor(torch.rand(6, 3, 32, 32)))
    assert logits.shape == (6, 10)


def test_real_statistics_are_cached_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extractor = build_extractor("random_conv", None)
    images = torch.rand(6, 3, 32, 32)
    key = stats_key(images, "random_conv", None)
    mu, sigma = reference_stats(extractor, images, tmp_path, key)
    assert (tmp_path / f"{key}.npz").is_file() and len(list(tmp_path.iterdir())) == 1
    monkeypatch.setattr("distst.metrics.reference.extract", lambda *a, **k: pytest.fail("recomputed"))
    again = reference_stats(extractor, images, tmp_path, key)
    assert np.array_equal(again[0], mu) and np.array_equal(again[1], sigma)
    other = images.clone()
    other[0, 0, 0, 0] += 1 / 255
    assert stats_key(other, "random_conv", None) != key != stats_key(images, "random_logits", None)


def test_section_checks_and_the_verdict_needs() -> None:
    base = ["model.name=sngan", "model.feature_extractor=random_logits", "data.crop=32"]
    with pytest.raises(ConfigError, match="sngan generates 32x32 images"):
        build_config({}, ["model.name=sngan", "model.feature_extractor=random_logits", "data.crop=64"])
    with pytest.raises(ConfigError, match="has no class logits, which the Inception Score needs"):
        build_config({}, [*base, "model.feature_extractor=random_conv"])
    with pytest.raises(ConfigError, match="model.inception_weights: prune.method=imp on sngan decides by FID"):
        build_config({}, ["model.name=sngan", "data.crop=32", "prune.method=imp"])
    cfg = build_config({}, [*base, "prune.method=imp", "data.content=shards/cifar10/train-{000000..000049}.tar"])
    assert cfg.prune.scope == ["generator"] and cfg.prune.discriminator == "reset"
    assert cfg.model.fid_stats == "shards/cifar10/fid_stats"  # beside the held-out shards
    assert build_config({}, [*base, "data.content=sample:content-000000.tar"]).model.fid_stats is None
    with pytest.raises(ConfigError, match="must equal discriminator.block2"):
        build_config({}, [*base, "model.plan={discriminator: {block3: 7}}"])


def test_stage_repeat_cuts_the_batch_into_consecutive_chunks() -> None:
    batch = (torch.arange(6.0), torch.arange(6.0) + 10)
    stage = Stage("d", ("discriminator",), lr=1.0, repeat=3)
    parts = stage.parts(batch)
    assert [tuple(t.tolist() for t in part) for part in parts] == [
        ([0.0, 1.0], [10.0, 11.0]), ([2.0, 3.0], [12.0, 13.0]), ([4.0, 5.0], [14.0, 15.0])]
    assert Stage("g", ("generator",), lr=1.0).parts(batch) == [batch]
    assert stage.problem(6, 1) is None
    assert "data.batch_size=4 must be a multiple of 3" in str(stage.problem(4, 1))
    assert "needs deepspeed.gradient_accumulation_steps=1" in str(stage.problem(6, 2))
    model = tiny()
    order = [(s.name, s.repeat, s.betas, s.after_step is not None) for s in model.stages(build_config({}).train)]
    assert order == [("discriminator", 5, (0.0, 0.9), False), ("generator", 1, (0.0, 0.9), True)]
