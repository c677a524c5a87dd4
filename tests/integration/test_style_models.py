"""The contract every registered style-transfer model keeps, checked for each one found in the registry (a new
model file gets these checks with no line to add): its groups, plan, forward, losses, errors, recorded
features, masks, and a model-file round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import on_int8_grid

from distst import registry
from distst.cli import main
from distst.config import build_config, model_section
from distst.models import StyleTransferModel, create, model_class, param_counts
from distst.models.io import load_model, save_model
from distst.prune.masks import apply_masks, full_masks, prune_magnitude, sparsity_report
from distst.quant import QuantAwareTraining

registry.load_builtins()
# distst's own models (tests register toy ones in the same process).
STYLE_MODELS = sorted(name for name, record in registry.MODELS.items()
                      if issubclass(record.model_class, StyleTransferModel)
                      and record.model_class.__module__.startswith("distst."))
WIDTH = 0.125


def test_the_suite_covers_every_style_transfer_model() -> None:
    assert {"adain", "sanet", "mccnet"} <= set(STYLE_MODELS)


def _size(name: str) -> int:
    cls = model_class(name)
    return max(32, -(-cls.min_size // cls.input_multiple) * cls.input_multiple)


def _model(name: str) -> StyleTransferModel:
    torch.manual_seed(0)
    return create(model_section(name=name, width=WIDTH)).eval()  # type: ignore[return-value]


def _pair(name: str, n: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size = _size(name)
    return torch.rand(n, 3, size, size, generator=g), torch.rand(n, 3, size, size, generator=g)


@pytest.fixture(params=STYLE_MODELS)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_groups_partition_the_parameters_and_the_plan_builds_the_reference(name: str) -> None:
    model = _model(name)
    assert tuple(model.groups()) == ("encoder", "transform", "decoder")
    owned = [id(p) for part in model.groups().values() for p in part.parameters()]
    assert len(owned) == len(set(owned)) == len(list(model.parameters()))
    assert type(model).default_plan(1.0) == type(model).reference_plan()
    # Its own plan, written out, builds the same network.
    again = create(model_section(name=name, width=WIDTH, plan=model.plan))
    assert param_counts(again) == param_counts(model)


def test_forward_is_deterministic_and_image_shaped(name: str) -> None:
    model = _model(name)
    content, style = _pair(name)
    with torch.no_grad():
        out = model(content, style)
        assert torch.equal(out, model(content, style))
    assert out.shape == content.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="expects N x 3 x H x W"):
        model(content[:, :1], style)


def test_every_weighted_loss_term_is_finite_and_trains_every_trainable_group(name: str) -> None:
    model = _model(name).train()
    loss_net = model.loss_network()
    assert not any(p.requires_grad for p in loss_net.parameters())
    terms = model.stage_losses("main", _pair(name), loss_net)
    weights = model.loss_weights()
    assert set(weights) <= set(terms) | {k for k, w in weights.items() if w == 0}
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    sum(weights[k] * terms[k] for k in weights if k in terms).backward()
    trained = {p for stage in model.stages(_train()) for g in stage.groups for p in model.groups()[g].parameters()
               if p.requires_grad}
    for group, part in model.groups().items():
        params = [p for p in part.parameters() if p in trained]
        if params:
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), group
    assert all(p.grad is None for p in loss_net.parameters())


def _train():
    from distst.config import TrainConfig

    return TrainConfig()


def test_errors_are_per_pair_and_need_no_random_numbers(name: str) -> None:
    model = _model(name)
    loss_net = model.loss_network()
    content, style = _pair(name, n=3)
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    first = model.errors(content, style, loss_net)
    # Evaluating draws nothing from the training RNG stream.
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(6)
    second = model.errors(content, style, loss_net)
    assert set(first) == set(second) and first
    for key in first:
        assert first[key].shape == (3,) and torch.isfinite(first[key]).all()
        assert torch.equal(first[key], second[key]), key


def test_recorded_features_are_the_forward_passs_own(name: str) -> None:
    model = _model(name)
    model.features.want(["output", "transform", "content/relu1_1"], model)
    content, style = _pair(name)
    with torch.no_grad():
        out = model(content, style)
    store = model.features.take()
    assert torch.equal(store["output"][0], out)
    assert store["content/relu1_1"][0].shape[:2] == (2, model.plan["encoder"]["conv1_1"])
    assert "transform" in store


def test_magnitude_masks_reach_the_sparsity_of_the_level(name: str) -> None:
    model = _model(name)
    scope = model.cfg.default_prune_scope
    masks = prune_magnitude(model, full_masks(model, scope), rate=0.2, level=2, layerwise=False)
    report = sparsity_report(masks)
    assert report["sparsity"] == pytest.approx(1 - 0.8 ** 2, abs=1e-4)
    # Kong's set-up: every group with weights is in the one global ranking.
    assert {g for g in scope if any(True for _ in model.groups()[g].parameters())} == set(report["groups"])
    with torch.no_grad():
        apply_masks(model, masks)
        assert torch.isfinite(model(*_pair(name))).all()


def test_a_model_file_round_trips_bitwise(name: str, tmp_path: Path) -> None:
    model = _model(name)
    path = save_model(model, tmp_path / "m.pt")
    loaded, section = load_model(path)
    assert section.name == name
    content, style = _pair(name)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(content, style), model(content, style))


def test_qat_quantises_every_conv_and_leaves_the_plain_layout_on_the_int8_grid(name: str) -> None:
    """``prune.method=qat``'s method on the model: fake-quant weights with straight-through gradients, observed
    conv inputs, then plain parameters (the model's own state-dict keys) on the per-channel int8 grid."""
    model = _model(name).train()
    keys = set(model.state_dict())
    cfg = build_config({"model": {"name": name, "width": WIDTH}, "prune": {"method": "qat"}})
    loss_net = model.loss_network()  # as the trainer does: before the method prepares the model
    qat = QuantAwareTraining(cfg.prune)  # type: ignore[arg-type]
    qat.prepare_model(model, cfg)
    convs = [m for m in qat.layers.values() if isinstance(m, torch.nn.Conv2d)]
    assert convs and len(qat.layers) == sum(isinstance(m, torch.nn.Conv2d | torch.nn.Linear) for m in model.modules())
    terms = model.loss_terms(*_pair(name), loss_net)
    sum(model.loss_weights()[k] * v for k, v in terms.items()).backward()
    trained = [m for m in convs if m.parametrizations.weight.original.requires_grad]
    assert trained and all(m.parametrizations.weight.original.grad is not None for m in trained)
    assert all(int(observer.seen) > 0 for observer in qat.observers().values())
    qat.on_train_end(None)  # type: ignore[arg-type]
    assert set(model.state_dict()) == keys
    assert all(on_int8_grid(conv.weight.detach()) for conv in convs)


def test_the_latency_bench_times_its_model_file(name: str, tmp_path: Path) -> None:
    model_file = save_model(_model(name), tmp_path / "model.pt")
    size = str(_size(name))
    assert main(["bench", "latency", "--checkpoint", str(model_file), "--size", size, "--style-size", size,
                 "--repeats", "1", "--warmup", "0", "--threads", "1", "--json", str(tmp_path / "latency.json")]) == 0
    row = json.loads((tmp_path / "latency.json").read_text())["rows"][0]
    assert row["params"] == param_counts(_model(name))["total"] and row["full_ms"] > 0 and row["cached_ms"] > 0
