"""SNGAN through the one trainer and IMP: n_critic discriminator steps then one generator step per loop step (the
moving average updated after each generator step only), a tiny IMP run that prunes 20% of the generator's conv
weights and nothing else, and a stop and resume that is bitwise equal (both optimizers, the moving average,
the noise stream, spectral norm's vectors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_config
from test_cyclegan import StageProbe, stop_and_resume_two_stages
from toy_models import same_weights

from distst.models import build
from distst.models.io import load_model
from distst.prune import run_schedule
from distst.train import train

TINY = {"model__name": "sngan", "model__width": 0.0625, "model__n_critic": 2, "model__generator_batch": 3,
        "model__feature_extractor": "random_logits", "model__fid_images": 4, "model__is_splits": 2,
        "data__batch_size": 4, "train__lr": 2e-4}


def test_n_critic_discriminator_steps_then_a_generator_step_and_the_average_after_it(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", **TINY, train__steps=2, train__eval_every=2, train__checkpoint_every=2)
    torch.manual_seed(cfg.train.seed)
    initial = build(cfg.model)
    probe = StageProbe()  # each optimizer step's stage; discriminator gradients when the generator steps
    result = train(cfg, tmp_path / "run", probe)
    assert probe.order == ["discriminator", "discriminator", "generator"] * 2 and probe.leaked == [False, False]
    trained = load_model(tmp_path / "run")[0]
    weight, shadow = trained.generator.net.c5.weight, trained.generator.shadow()["c5.weight"]
    start = initial.generator.net.c5.weight
    assert not torch.equal(weight, start) and not torch.equal(shadow, start) and not torch.equal(shadow, weight)
    assert int(trained.generator.noise.draws) == 2 * (2 + 1)  # one draw per discriminator and generator step
    assert {"d_real_error", "d_fake_error", "total_error"} <= set(result.summary["final"])


def test_imp_prunes_20_percent_of_the_generator_convs_only(tmp_path: Path) -> None:
    out = tmp_path / "imp"
    cfg = tiny_config(out, **TINY, prune__method="imp", prune__rounds=1, train__steps=2, train__eval_every=2,
                      train__checkpoint_every=2, model__fid_stats=str(tmp_path / "fid_stats"))
    summary = run_schedule(cfg, out).summary
    assert summary["verdict"] == "fid" and summary["scope"] == ["generator"] and summary["discriminator"] == "reset"
    dense, pruned = summary["levels"]
    assert pruned["sparsity"] == pytest.approx(0.2, abs=1e-3) and {"inception_score", "fid"} <= set(pruned)
    assert len(list((tmp_path / "fid_stats").glob("*.npz"))) == 1  # the real set's statistics: computed once
    model = load_model(out / "level_1")[0]
    g_convs = [m.weight for m in model.generator.net.modules() if isinstance(m, torch.nn.Conv2d)]
    zeros = sum(int((w == 0).sum()) for w in g_convs)
    assert zeros == round(0.2 * sum(w.numel() for w in g_convs))
    assert int((model.generator.net.l1.weight == 0).sum()) == 0  # the linear layer is not pruned
    assert all(int((p == 0).sum()) == 0 for p in model.discriminator.parameters())  # reset: dense
    shadow = model.generator.shadow()
    for name, param in model.generator.net.named_parameters():  # the evaluated generator is the ticket too
        if param.dim() == 4:
            assert torch.equal(shadow[name] == 0, param == 0), name


@pytest.mark.slow
def test_stop_and_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path: Path) -> None:
    a, b = stop_and_resume_two_stages(tmp_path, TINY)
    assert same_weights(a, b)  # weights, the moving average, the noise stream, BN statistics, u and v
    assert int(a["generator.noise.draws"]) == 4 * 3 and any("spectral" in k for k in a)
