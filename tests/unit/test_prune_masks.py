"""Masks: exact sparsity schedules, layerwise rates, what is never pruned, and masked training."""

from __future__ import annotations

import pytest
import torch

from distst.config import model_section
from distst.models import build
from distst.prune.masks import (
    MaskedTraining,
    apply_masks,
    full_masks,
    prunable_layers,
    prune_magnitude,
    random_subset,
    remaining_target,
    sparsity_report,
)


@pytest.fixture()
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build(model_section(name="sanet", width=0.125, encoder="trainable"))


def test_prunable_layers_are_the_scoped_convs(model: torch.nn.Module) -> None:
    layers = prunable_layers(model, ["transform"])
    assert set(layers) == {f"transform.sanet{m}_1.{c}" for m in (4, 5) for c in ("f", "g", "h", "out_conv")} | {
        "transform.merge_conv"}
    # encoder to relu5_1: the 1x1 conv and 13 3x3 convs; transform 9 convs; decoder 9 convs
    assert len(prunable_layers(model, ["encoder", "transform", "decoder"])) == 14 + 9 + 9
    with pytest.raises(ValueError, match="unknown group"):
        prunable_layers(model, ["head"])


def test_global_imp_sparsity_is_exactly_the_schedule(model: torch.nn.Module) -> None:
    masks = full_masks(model, ["encoder", "transform", "decoder"])
    total = sum(m.numel() for m in masks.values())
    for level in range(1, 6):
        masks = prune_magnitude(model, masks, 0.2, level, layerwise=False)
        apply_masks(model, masks)
        report = sparsity_report(masks)
        assert report["remaining_weights"] == remaining_target(total, 0.2, level)
        assert report["sparsity"] == pytest.approx(1 - 0.8**level, abs=1 / total)


def test_global_pruning_removes_the_smallest_magnitudes(model: torch.nn.Module) -> None:
    masks = prune_magnitude(model, full_masks(model, ["decoder"]), 0.5, 1, layerwise=False)
    layers = prunable_layers(model, ["decoder"])
    kept = torch.cat([layers[n].weight.detach().abs()[m].flatten() for n, m in masks.items()])
    dropped = torch.cat([layers[n].weight.detach().abs()[~m].flatten() for n, m in masks.items()])
    assert dropped.max() <= kept.min()


def test_layerwise_prunes_the_rate_in_every_layer(model: torch.nn.Module) -> None:
    masks = full_masks(model, ["encoder", "decoder"])
    for level in (1, 2, 3):
        masks = prune_magnitude(model, masks, 0.2, level, layerwise=True)
        for name, mask in masks.items():
            assert int(mask.sum()) == remaining_target(mask.numel(), 0.2, level), name


def test_masks_are_nested_and_biases_untouched(model: torch.nn.Module) -> None:
    biases = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("bias")}
    first = prune_magnitude(model, full_masks(model, ["decoder", "transform"]), 0.2, 1, layerwise=False)
    apply_masks(model, first)
    second = prune_magnitude(model, first, 0.2, 2, layerwise=False)
    assert all(torch.all(first[n] | ~second[n]) for n in first), "a level revived a pruned weight"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in biases.items())
    assert not any(k.startswith("encoder") for k in second)


def test_random_subset_keeps_the_count_inside_the_prior() -> None:
    prior = torch.rand(6, 5, 3, 3) > 0.3
    sub = random_subset(prior, 40, torch.Generator().manual_seed(1))
    assert int(sub.sum()) == 40 and torch.all(prior | ~sub)
    assert not torch.equal(sub, random_subset(prior, 40, torch.Generator().manual_seed(2)))


def test_masked_training_keeps_pruned_weights_and_adam_moments_at_zero(model: torch.nn.Module) -> None:
    from distst.train.hooks import TrainContext

    masks = prune_magnitude(model, full_masks(model, ["encoder", "transform", "decoder"]), 0.5, 1, layerwise=False)
    method = MaskedTraining(masks)
    ctx = TrainContext(cfg=None, model=model, workdir=None, dist=None)  # type: ignore[arg-type]
    method.on_train_start(ctx)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    layers = prunable_layers(model, ["encoder", "transform", "decoder"])
    for _ in range(3):
        image = torch.rand(1, 3, 32, 32)
        model(image, image).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        method.after_optimizer_step(ctx)
    for name, mask in masks.items():
        weight = layers[name].weight
        assert torch.all(weight[~mask] == 0), name
        assert torch.all(optimizer.state[weight]["exp_avg"][~mask] == 0), f"Adam moment drifted in {name}"
    assert sparsity_report(method.state_dict()["masks"])["sparsity"] == pytest.approx(0.5, abs=1e-4)


def test_a_low_precision_weight_without_a_reachable_master_is_not_counted_as_masked() -> None:
    """A bf16 weight whose fp32 master the code cannot reach must not count as masked (the caller then refuses to
    train); an fp32 weight is its own master and counts."""
    from distst.prune.masks import apply_to_optimizer

    layers = {"a": torch.nn.Linear(3, 2), "b": torch.nn.Linear(3, 2).bfloat16()}
    masks = {name: torch.ones(2, 3, dtype=torch.bool) for name in layers}
    assert apply_to_optimizer({}, layers, masks) == (1, True)
