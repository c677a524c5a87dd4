"""IMP on CycleGAN: the generators' sparsity schedule, what each ``prune.discriminator`` option does, the FID
verdict, and a 2-level run end to end (summary, report, W&B offline) with a random feature extractor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import tiny_config
from PIL import Image

from distst.config import ConfigError, build_config
from distst.models import build
from distst.models.io import load_model
from distst.prune import prune_magnitude, run_schedule
from distst.prune.lottery import compute_masks, imp_summary, initial_state, level_values
from distst.prune.masks import full_masks, remaining_target
from distst.records import record_path, step_records
from distst.track import read_metrics

GAN = {"model__name": "cyclegan", "model__width": 0.0625, "model__blocks": 1, "model__pool_size": 2,
       "model__feature_extractor": "random_conv", "model__fid_images": 4, "prune__method": "imp", "prune__rounds": 1,
       "train__steps": 2, "train__lr": 2e-4, "train__eval_every": 2, "train__checkpoint_every": 2}


def gan_config(out: Path, **extra: object):  # noqa: ANN201
    return tiny_config(out, **{**GAN, **extra})


def discriminator_keys(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in state if k.startswith(("discriminator.a.", "discriminator.b."))]


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gan") / "run"
    result = run_schedule(gan_config(out, tracking__backend="wandb", tracking__mode="offline"), out)
    assert not result.stopped
    return out, result.summary


def test_generator_sparsity_follows_the_schedule_exactly_and_covers_every_conv() -> None:
    cfg = build_config({}, ["model.name=cyclegan", "model.width=0.0625", "model.blocks=1", "prune.method=imp",
                            "model.feature_extractor=random_conv"])
    assert cfg.prune.scope == ["generator"] and cfg.prune.discriminator == "reset"
    model = build(cfg.model)
    masks = full_masks(model, cfg.prune.scope)
    convs = [n for n, m in model.generator.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert sorted(masks) == sorted(f"generator.{n}" for n in convs)  # first, last and transposed convs included
    assert {"generator.ab.stem.conv", "generator.ab.head.conv", "generator.ba.up1.conv"} <= set(masks)
    total = sum(m.numel() for m in masks.values())
    for level in (1, 2, 3):
        masks = prune_magnitude(model, masks, 0.2, level, layerwise=False)
        kept = sum(int(m.sum()) for m in masks.values())
        assert kept == remaining_target(total, 0.2, level)
        assert 1 - kept / total == pytest.approx(1 - 0.8**level, abs=1 / total)


def test_discriminator_option_is_refused_for_models_without_one_and_kept_out_of_their_configs() -> None:
    with pytest.raises(ConfigError, match="prune.discriminator / prune.distill_weight: adain has no discriminator"):
        build_config({}, ["prune.method=imp", "prune.discriminator=reset"])
    adain = build_config({}, ["prune.method=imp"])
    assert "discriminator" not in adain.model_dump()["prune"] and "discriminator" not in adain.to_yaml()
    base = ["model.name=cyclegan", "prune.method=imp", "model.feature_extractor=random_conv"]
    assert build_config({}, [*base, "prune.discriminator=prune"]).prune.scope == ["generator", "discriminator"]
    with pytest.raises(ConfigError, match="the discriminator is in the scope exactly when prune.discriminator=prune"):
        build_config({}, [*base, "prune.scope=[generator, discriminator]"])
    with pytest.raises(ConfigError, match="prune.distill_weight is only used with prune.discriminator=distill"):
        build_config({}, [*base, "prune.distill_weight=2"])
    assert build_config({}, [*base, "prune.discriminator=distill"]).prune.distill_weight == 1.0
    with pytest.raises(ConfigError, match="model.inception_weights: prune.method=imp on cyclegan decides by FID"):
        build_config({}, ["model.name=cyclegan", "prune.method=imp"])


@pytest.mark.slow
def test_two_levels_end_to_end_with_fid_verdict_report_and_wandb(gan_run: tuple[Path, dict]) -> None:
    out, summary = gan_run
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "fid" and summary["discriminator"] == "reset" and summary["complete"]
    dense, pruned = summary["levels"]
    assert summary["dense_fid"] == dense["fid"] > 0
    assert pruned["sparsity"] == pytest.approx(0.2, abs=1e-3)
    assert pruned["matching"] == (pruned["fid"] <= dense["fid"])
    assert summary["extreme_sparsity"] == (pruned["sparsity"] if pruned["matching"] else 0.0)
    assert {"kid", "kid_std", "photo_cycle_error", "painting_cycle_error", "total_error"} <= set(pruned)
    record = json.loads(record_path(out, "level_1").read_text())
    metrics = level_values(record)
    assert set(metrics["sparsity_groups"]) == {"generator"} and metrics["fid_images"] == 4
    report = (out / "report" / "report.md").read_text()
    assert "matching the dense FID" in report and "| FID | KID |" in report and report.count("\n| ") == 3
    for name in ("fid_vs_sparsity.png", "group_sparsity.png", "samples.png"):
        with Image.open(out / "report" / name) as img:
            assert img.format == "PNG"
    runs = sorted(p.name.split("-")[0] for p in out.rglob("offline-run-*"))
    assert runs == ["offline", "offline", "offline"]  # level 0, level 1 and the summary run
    # flipping the verdict's inputs flips the verdict: FID decides, not the cycle errors
    copy = out.parent / "flipped"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("wandb", "checkpoints"))
    path = record_path(copy, "level_1")
    path.write_text(json.dumps({**record, "fid": dense["fid"] + 1, "errors": {**record["errors"], "total_error": 0.0}}))
    flipped = imp_summary(gan_config(copy), step_records(copy))
    assert not flipped["levels"][1]["matching"] and flipped["extreme_sparsity"] == 0.0


@pytest.mark.slow
def test_each_discriminator_option_does_what_it_says(gan_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = gan_run
    cfg = gan_config(out)
    torch.manual_seed(cfg.train.seed)
    initial = build(cfg.model).state_dict()
    dense = load_model(out / "level_0")[0].state_dict()
    keys = discriminator_keys(initial)

    masks = compute_masks(cfg, out, 1)
    reset = initial_state(cfg, out, 1, masks)
    assert all(torch.equal(reset[k], initial[k]) for k in keys)  # reset: the initial discriminator

    finetune = initial_state(gan_config(out, prune__discriminator="finetune"), out, 1, masks)
    assert all(torch.equal(finetune[k], dense[k]) for k in keys) and not all(torch.equal(dense[k], initial[k])
                                                                               for k in keys)
    assert torch.equal(finetune["discriminator.pool_a.count"], initial["discriminator.pool_a.count"])

    pruned_cfg = gan_config(out, prune__discriminator="prune")
    gd_masks = compute_masks(pruned_cfg, out, 1)
    d_masks = {n: m for n, m in gd_masks.items() if n.startswith("discriminator.")}
    assert len(d_masks) == 10 and all(torch.equal(gd_masks[n], masks[n]) for n in masks)  # the same generator ticket
    d_total = sum(m.numel() for m in d_masks.values())
    assert sum(int(m.sum()) for m in d_masks.values()) == remaining_target(d_total, 0.2, 1)
    start = initial_state(pruned_cfg, out, 1, gd_masks)
    for name, mask in d_masks.items():  # masked and rewound
        assert torch.equal(start[f"{name}.weight"], initial[f"{name}.weight"] * mask)

    distill_dir = tmp_path / "distill"  # the dense level is shared; level 1 trains with the KD loss
    distill_dir.mkdir()
    shutil.copytree(out / "level_0", distill_dir / "level_0", ignore=shutil.ignore_patterns("wandb"))
    for step in ("level_0_masks", "level_0"):  # and its records: the dense level is done
        record_path(distill_dir, step).parent.mkdir(exist_ok=True)
        shutil.copy(record_path(out, step), record_path(distill_dir, step))
    summary = run_schedule(gan_config(distill_dir, prune__discriminator="distill", prune__distill_weight=2.0),
                      distill_dir).summary
    rows = [r for r in read_metrics(distill_dir / "level_1" / "metrics.jsonl") if "discriminator/loss" in r]
    assert rows and all(r["discriminator/distill"] > 0 for r in rows)
    assert not any("generator/distill" in r for r in rows)  # only the discriminator's stage
    assert not any("discriminator/distill" in r for r in read_metrics(distill_dir / "level_0" / "metrics.jsonl"))
    assert summary["discriminator"] == "distill" and summary["distill_weight"] == 2.0
