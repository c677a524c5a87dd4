"""Distillation from the dense teacher: the loss against a hand computation, adapters where the student is
narrower, what the teacher is never part of, and the refusals (``distst.distill``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_config

from distst.config import ConfigError, DistillConfig, build_config
from distst.distill import ADAPTERS, Distillation, with_distillation
from distst.models import build
from distst.models.io import save_model
from distst.prune.channels import slim, widths
from distst.train.engine import DistInfo
from distst.train.hooks import MethodList, StepInputs, TrainContext


def _models(tmp_path: Path) -> tuple:
    cfg = tiny_config(tmp_path)
    torch.manual_seed(1)
    teacher = build(cfg.model)
    torch.manual_seed(2)
    student = build(cfg.model)
    return cfg, student, teacher


def _context(cfg, model) -> TrainContext:
    return TrainContext(cfg, model, Path("."), DistInfo(0, 0, 1, torch.device("cpu")), loss_net=model.loss_network())


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)


def _losses(distill: Distillation, ctx: TrainContext, batch) -> dict[str, torch.Tensor]:
    student = ctx.model
    distill.on_train_start(ctx)
    student.features.want(distill.feature_requests(), student)
    student.stage_losses("main", batch, ctx.loss_net)
    return distill.extra_losses(ctx, StepInputs("main", batch, student.features.take()))


def test_the_loss_is_the_weighted_mse_to_the_teachers_output_and_features(tmp_path: Path) -> None:
    cfg, student, teacher = _models(tmp_path)
    distill = Distillation(teacher, DistillConfig(weight=2.0, features=["transform"], feature_weight=0.5))
    distill.prepare_model(student, cfg)
    assert not hasattr(student, ADAPTERS), "same widths: no adapter"
    content, style = _batch()
    losses = _losses(distill, _context(cfg, student), (content, style))

    with torch.no_grad():  # written out: both models' stylisations and their AdaIN outputs
        s_out, t_out = student(content, style), teacher(content, style)
        def adain(model):
            c, s = model.encoder(content)[-1], model.encoder(style)[-1]
            cm, cs = c.mean((2, 3), keepdim=True), c.var((2, 3), keepdim=True, unbiased=False).add(1e-5).sqrt()
            sm, ss = s.mean((2, 3), keepdim=True), s.var((2, 3), keepdim=True, unbiased=False).add(1e-5).sqrt()
            return (c - cm) / cs * ss + sm
        s_t, t_t = adain(student), adain(teacher)
    assert losses["distill"].item() == pytest.approx(2.0 * ((s_out - t_out) ** 2).mean().item(), rel=1e-5)
    assert losses["distill/transform"].item() == pytest.approx(0.5 * ((s_t - t_t) ** 2).mean().item(), rel=1e-4)
    assert losses["distill"].requires_grad and losses["distill"] > 0


def test_the_teacher_gets_no_gradient_and_is_in_no_state_dict(tmp_path: Path) -> None:
    cfg, student, teacher = _models(tmp_path)
    distill = Distillation(teacher, DistillConfig(weight=1.0))
    distill.prepare_model(student, cfg)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ctx = _context(cfg, student)
    sum(_losses(distill, ctx, _batch()).values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert any(p.grad is not None for p in student.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert set(student.state_dict()) == set(build(cfg.model).state_dict()), "the teacher is not in the student"
    assert MethodList([distill]).state_dict() in ({}, {"distill": {}}), "nor in the checkpointed method state"


def test_a_narrower_student_trains_an_adapter_that_the_model_file_never_holds(tmp_path: Path) -> None:
    cfg, _, teacher = _models(tmp_path)
    conv41 = widths(teacher)["encoder"]["conv4_1"]
    student = slim(teacher, {"encoder": {"conv4_1": list(range(conv41 // 2))}})
    distill = Distillation(teacher, DistillConfig(weight=1.0, features=["transform"]))
    rng = torch.get_rng_state()
    distill.prepare_model(student, cfg)
    assert torch.equal(rng, torch.get_rng_state()), "adapters and the probe leave the training RNG alone"
    (adapter,) = getattr(student, ADAPTERS).values()
    assert (adapter.in_channels, adapter.out_channels) == (conv41 // 2, conv41)
    assert any(k.startswith(ADAPTERS) for k in student.state_dict())
    losses = _losses(distill, _context(cfg, student), _batch())
    losses["distill/transform"].backward()
    assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0
    distill.on_train_end(_context(cfg, student))
    assert not any(k.startswith(ADAPTERS) for k in student.state_dict())
    save_model(student, tmp_path / "student.pt")
    assert set(torch.load(tmp_path / "student.pt", weights_only=True)["state_dict"]) == set(
        slim(teacher, {"encoder": {"conv4_1": list(range(conv41 // 2))}}).state_dict())


def test_refusals_name_the_key(tmp_path: Path) -> None:
    cfg, student, _ = _models(tmp_path)
    sanet = build(build_config({}, ["model.name=sanet", "model.width=0.125"]).model)
    with pytest.raises(ConfigError, match="distill.teacher: the teacher holds a sanet model, but the run trains adain"):
        Distillation(sanet, DistillConfig(weight=1.0)).prepare_model(student, cfg)
    with pytest.raises(ConfigError, match="distill.features: adain records no nonesuch"):
        Distillation(build(cfg.model), DistillConfig(weight=1.0, features=["nonesuch"])).prepare_model(student, cfg)
    on = tiny_config(tmp_path, distill__weight=1.0)
    with pytest.raises(ConfigError, match="name a model file with distill.teacher"):
        with_distillation(None, on, teacher=None)
    assert with_distillation(None, tiny_config(tmp_path), teacher=None) is None, "off by default"


def test_off_it_leaves_configs_and_their_hashes_as_they_were(tmp_path: Path) -> None:
    off = tiny_config(tmp_path)
    assert "distill" not in off.model_dump() and "distill" not in off.to_yaml()
    on = tiny_config(tmp_path, distill__weight=0.5)
    assert on.model_dump()["distill"]["weight"] == 0.5 and on.config_hash() != off.config_hash()
