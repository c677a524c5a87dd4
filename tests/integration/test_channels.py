"""Channel pruning: slimmed == masked for every method and model, widths from the ratios, the regularisers
against hand computations, scale folding, and `distst prune` / `distst slim` end to end."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import run_distst, tiny_overrides, write_job
from PIL import Image

from distst.config import build_config, model_section
from distst.models import build
from distst.models.io import load_model
from distst.prune.channels import mask_channels, slim, widths
from distst.prune.channels.methods import CpstSection, IccpSection, L2Section, PruneInputs, kept_count
from distst.prune.channels.regularisers import (
    SCALES_FILE,
    ChannelScales,
    channel_activity,
    channel_loss,
    correlation_penalty,
    decorrelation_loss,
    slimming_l1,
    xor_loss,
)

MODELS = ("adain", "sanet", "mccnet", "lst", "manet", "adaattn")


def _model(name: str):
    torch.manual_seed(0)
    model = build(model_section(name=name, width=0.125)).eval()
    with torch.no_grad():  # non-zero biases everywhere, so a kept bias that moved would show
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(-0.1, 0.1)
    return model


def _random_scales(model, path: Path, sides=("encoder", "decoder")) -> None:
    g = torch.Generator().manual_seed(3)
    torch.save({f"{side}.{name}": torch.rand(m.weight.shape[0], generator=g)
                for side in sides for name, m in model.channel_layers()[side].items()}, path / SCALES_FILE)


def _selection(method: str, model, tmp_path: Path):
    cfg = build_config({"model": {"name": model.name, "width": 0.125}, "prune": {"method": method}})
    images = lambda: torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))  # noqa: E731
    inputs = PruneInputs(cfg, model, tmp_path, widths(model), images)
    if method == "l2":
        return cfg.prune.select(inputs, iteration=cfg.prune.iterations)
    if method == "iccp":
        _random_scales(model, tmp_path)
        return {**cfg.prune.select(inputs, "encoder", 0.5), **cfg.prune.select(inputs, "decoder", 0.5)}
    return cfg.prune.select(inputs)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", ["l2", "iccp", "cpst"])
def test_slimmed_model_equals_its_masked_parent_and_keeps_the_original_weights(name, method, tmp_path):
    model = _model(name)
    selection = _selection(method, model, tmp_path)
    slimmed = slim(model, selection)
    masked = mask_channels(copy.deepcopy(model), selection)
    assert sum(p.numel() for p in slimmed.parameters()) < sum(p.numel() for p in model.parameters())
    for size in (32, 64):
        content, style = torch.rand(2, 3, size, size), torch.rand(2, 3, size, size)
        with torch.no_grad():
            for alpha in (1.0, 0.6):
                diff = (slimmed(content, style, alpha=alpha) - masked(content, style, alpha=alpha)).abs().max()
                assert diff < 1e-5, (size, alpha, float(diff))
    # The kept output channels keep their weights (over the kept inputs) and their biases.
    old, new = model.channel_layers(), slimmed.channel_layers()
    for group, kept_by_layer in selection.items():
        for layer, kept in kept_by_layer.items():
            assert torch.equal(new[group][layer].bias, old[group][layer].bias[kept])
            w_old, w_new = old[group][layer].weight[kept], new[group][layer].weight
            assert w_new.shape[0] == len(kept)
            if w_new.shape[1] == w_old.shape[1]:
                assert torch.equal(w_new, w_old)
    # The slimmed model file carries its plan and loads with no extra arguments.
    from distst.models.io import save_model

    path = save_model(slimmed, tmp_path / "slim.pt")
    loaded, _ = load_model(path)
    assert widths(loaded) == widths(slimmed)


def test_l2_widths_follow_the_ratios_and_the_decoder_mirrors_the_encoder(tmp_path):
    model = _model("adain")
    cfg = build_config({"model": {"name": "adain", "width": 0.125},
                        "prune": {"method": "l2", "iterations": 2, "layer_ratios": {"conv4_1": 0.5}}})
    dense = widths(model)
    current = model
    for it in (1, 2):
        current = slim(current, cfg.prune.select(PruneInputs(cfg, current, tmp_path, dense, lambda: None), it))
        for layer in cfg.prune.layers:
            ratio = cfg.prune.total_ratio(layer)
            want = kept_count(dense["encoder"][layer], (1 - ratio) ** (it / 2), cfg.prune.min_channels)
            assert widths(current)["encoder"][layer] == want
            if layer in dense["decoder"]:
                assert widths(current)["decoder"][layer] == want
    final = widths(current)
    assert final["encoder"]["conv4_1"] == round(64 * 0.5) and final["encoder"]["conv3_1"] == round(32 * 0.6)
    assert final["encoder"]["conv1_1"] == dense["encoder"]["conv1_1"]  # early layers are kept


def test_iccp_total_ratio_with_floors(tmp_path):
    model = _model("adain")
    cfg = build_config({"model": {"name": "adain", "width": 0.125}, "prune": {"method": "iccp"}})
    dense, current = widths(model), model
    for ratio in cfg.prune.ratios:
        for side in cfg.prune.sides:
            _random_scales(current, tmp_path, sides=(side,))
            selection = cfg.prune.select(PruneInputs(cfg, current, tmp_path, dense, lambda: None), side, ratio)
            current = slim(current, selection)
    final = widths(current)
    for group, layers in dense.items():
        for layer, width in layers.items():
            want = width
            for ratio in cfg.prune.ratios:
                want = kept_count(want, 1 - ratio, cfg.prune.min_channels)
            assert final[group][layer] == want >= cfg.prune.min_channels
    # Where no floor binds, 1 - prod(1 - r) = 0.9 of the channels are gone.
    assert final["encoder"]["conv4_1"] == round(round(64 * 0.7) * 0.143)
    assert math.isclose(1 - (1 - 0.3) * (1 - 0.857), 0.9, abs_tol=1e-3)


def test_cpst_removes_the_least_used_relu4_1_channels(tmp_path):
    model = _model("adain")
    with torch.no_grad():  # every conv4_1 channel alive, but three silenced completely
        conv = model.channel_layers()["encoder"]["conv4_1"]
        conv.bias.fill_(1.0)
        conv.weight[[1, 5, 9]] = 0
        conv.bias[[1, 5, 9]] = -1
    cfg = build_config({"model": {"name": "adain", "width": 0.125}, "prune": {"method": "cpst", "ratio": 0.25}})
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    selection = cfg.prune.select(PruneInputs(cfg, model, tmp_path, widths(model), lambda: images))
    kept = selection["encoder"]["conv4_1"]
    with torch.no_grad():
        response = model.encoder(images)[-1].flatten(2).norm(dim=2).sum(dim=0)
    removed = sorted(set(range(64)) - set(kept))
    assert len(kept) == 48 and {1, 5, 9} <= set(removed)
    assert response[removed].max() <= response[kept].min()


def test_regularisers_against_hand_computations():
    assert slimming_l1([torch.tensor([1.0, -2.0]), torch.tensor([0.5])]) == 3.5
    # One image, two channels, two pixels: S = F F^T = [[1*1+2*2, 1*3+2*4], [., 3*3+4*4]] = [[5, 11], [11, 25]].
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, -4.0]]]])
    assert correlation_penalty(f) == 5 + 25 + 2 * abs(1 * 3 - 2 * 4)
    # Soft l0: ||F|| / (||F|| + 1e-5); a silent channel is 0.
    feats = torch.zeros(2, 2, 1, 2)
    feats[0, 0] = torch.tensor([3.0, 4.0])  # norm 5
    feats[1, 1] = torch.tensor([0.0, 2.0])  # norm 2
    act = channel_activity(feats)
    assert torch.allclose(act, torch.tensor([[5 / (5 + 1e-5), 0.0], [0.0, 2 / (2 + 1e-5)]]))
    assert torch.isclose(channel_loss(act), act.sum() / 4)
    # xor: one pair, |a0 - a1| per channel, averaged over the channels.
    assert torch.isclose(xor_loss(act), ((act[0] - act[1]).abs()).mean())
    three = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    assert torch.isclose(xor_loss(three), torch.tensor((1 + 0 + 0 + 1 + 1 + 1) / 6))
    # Perfectly correlated channels: |off-diagonal| = 1; anti-correlated too.
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.isclose(decorrelation_loss(torch.stack([x, -2 * x]).view(1, 2, 1, 4)), torch.tensor(1.0), atol=1e-6)


def test_channel_scales_fold_into_the_convs_exactly(tmp_path):
    from types import SimpleNamespace

    model = _model("adain")
    method = ChannelScales([("encoder", "conv2_1"), ("decoder", "conv1_2")], lam=0.1, eta=0.0, out_dir=tmp_path)
    method.prepare_model(model, None)
    with torch.no_grad():
        for scale in method.scales().values():
            scale.copy_(torch.rand_like(scale) * 2)
    content, style = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        scaled = model(content, style)
    assert any("channel_scale" in k for k in model.state_dict())
    method.on_train_end(SimpleNamespace(dist=SimpleNamespace(is_main=True)))
    with torch.no_grad():
        folded = model(content, style)
    assert torch.allclose(scaled, folded, atol=1e-5)
    assert not any("channel_scale" in k for k in model.state_dict())  # model.pt keeps the plain layout
    assert set(torch.load(tmp_path / SCALES_FILE, weights_only=True)) == {"encoder.conv2_1", "decoder.conv1_2"}


def test_bad_method_settings_are_named():
    with pytest.raises(Exception, match="prune.layers: adain has no encoder layer"):
        build_config({"prune": {"method": "l2", "layers": ["conv5_1"]}})
    with pytest.raises(Exception, match="ratio"):
        build_config({"prune": {"method": "iccp", "ratios": [0.3, 1.5]}})
    assert isinstance(build_config({"prune": {"method": "cpst"}}).prune, CpstSection)
    assert isinstance(build_config({"prune": {"method": "iccp"}}).prune, IccpSection)
    assert isinstance(build_config({"prune": {"method": "l2"}}).prune, L2Section)


@pytest.mark.slow
def test_distst_prune_end_to_end_resumes_and_slims(tmp_path):
    run = tmp_path / "run"
    job = write_job(tmp_path / "job.yaml")
    args = ["prune", str(job), *tiny_overrides(run, train__steps=2, train__checkpoint_every=1),
            "prune.method=iccp", "prune.ratios=[0.5]", "prune.sides=[encoder]", "prune.finetune_steps=1",
            "tracking.backend=wandb", "tracking.mode=offline"]
    run_distst(*args)
    summary = json.loads((run / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["dense", "sparsify_1_encoder", "prune_1_encoder",
                                                      "finetune_1_encoder"]
    assert summary["final"]["params"]["total"] < summary["dense"]["params"]["total"]
    assert summary["channels_removed_in_scope"] > 0.4
    assert summary["pruning_steps"][0]["total_error_after_finetune"] is not None
    assert (run / "report" / "report.md").is_file() and (run / "report" / "widths.png").is_file()
    assert list((run / "wandb").glob("offline-run-*"))  # the summary run went to W&B (offline)
    slim_file = run / "slim" / "model.pt"
    model, _ = load_model(slim_file)
    assert widths(model)["encoder"]["conv4_1"] == 32 and widths(model)["decoder"] == widths(_model("adain"))["decoder"]
    assert "| prune_1_encoder | prune |" in run_distst("report", str(run)).stdout
    # Done stages are skipped: a rerun trains nothing and gives the same summary.
    again = run_distst(*args)
    assert "finished step" not in again.stdout + again.stderr
    assert json.loads((run / "summary.json").read_text()) == summary
    # `distst slim` rebuilds the same file; stylize loads it with no extra flags.
    before = load_model(slim_file)[0].state_dict()
    run_distst("slim", str(run))
    after = load_model(slim_file)[0].state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    image = tmp_path / "c.png"
    Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()).save(image)
    run_distst("stylize", "--checkpoint", str(slim_file), "--content", str(image), "--style", str(image),
               "--out", str(tmp_path / "out.png"), "--content-size", "32", "--style-size", "32")
    assert (tmp_path / "out.png").is_file()


def test_each_command_refuses_the_others_methods_in_one_line(tmp_path, capsys):
    from distst.cli import main

    job = str(write_job(tmp_path / "job.yaml"))
    assert main(["prune", job, *tiny_overrides(tmp_path / "r"), "prune.method=imp"]) == 2
    assert "distst prune needs a channel-pruning method" in capsys.readouterr().err
    assert main(["train", job, *tiny_overrides(tmp_path / "r"), "prune.method=iccp"]) == 2
    assert "prune.method=iccp runs through its own command: distst prune" in capsys.readouterr().err
    assert main(["prune", job, *tiny_overrides(tmp_path / "r"), "model.name=cyclegan", "model.feature_extractor=random_conv",
                 "prune.method=iccp"]) == 2
    assert "cyclegan declares no channel layers" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.distributed
def test_distst_prune_with_two_gloo_processes(tmp_path):
    run = tmp_path / "run"
    run_distst("prune", str(write_job(tmp_path / "job.yaml")), *tiny_overrides(run, train__steps=2),
               "prune.method=iccp", "prune.ratios=[0.5]", "prune.sides=[encoder]", "prune.finetune_steps=1",
               "--nproc", "2")
    summary = json.loads((run / "summary.json").read_text())
    train_dirs = [run / f"{s['index']:02d}_{s['stage']}" for s in summary["stages"] if s["kind"] == "train"]
    assert [json.loads((d / "summary.json").read_text())["world_size"] for d in train_dirs] == [2, 2, 2]
    model, _ = load_model(run / "slim" / "model.pt")
    assert widths(model)["encoder"]["conv4_1"] == 32  # rank 0 chose, every rank trained the slimmed plan
