"""MCCNet: the reference layout (official files load strictly), the module against closed forms, its losses,
narrower plans, alpha, and ``distst stylize``/``distst models`` end to end at tiny sizes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_config, write_image
from PIL import Image

from distst.cli import main
from distst.config import model_section
from distst.images import load_image
from distst.models import WeightsError, build, param_counts
from distst.models.complexity import macs
from distst.models.decoder import REFERENCE_WIDTHS as DECODER_WIDTHS
from distst.models.decoder import Decoder
from distst.models.io import load_model
from distst.models.mccnet import MCCModule, MCCTransform, channel_statistic, total_variation
from distst.models.stats import mean_variance_norm
from distst.models.vgg import VGGEncoder, vgg_normalised_layers
from distst.track import read_metrics
from distst.train import train
from distst.weights import load_checked

# The reference's mcc_module_iter_*.pth (MCC_Module(512) with its MCCNet as ``MCCN``): key -> shape.
REFERENCE_TRANSFORM = {
    **{f"MCCN.{conv}.weight": (512, 512, 1, 1) for conv in ("f", "g", "h", "out_conv")},
    **{f"MCCN.{conv}.bias": (512,) for conv in ("f", "g", "h", "out_conv")},
    "MCCN.fc.weight": (512, 512), "MCCN.fc.bias": (512,),
}
UNUSED_H = {"MCCN.h.weight", "MCCN.h.bias"}


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def official_transform_file(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=generator) * 0.02 for k, shape in REFERENCE_TRANSFORM.items()}
    torch.save(state, path)
    return state


# --- layout and counts ------------------------------------------------------------------------

def test_module_parameter_counts_with_and_without_the_unused_h() -> None:
    with_h = sum(math.prod(shape) for shape in REFERENCE_TRANSFORM.values())
    assert with_h == 1_313_280
    assert sum(p.numel() for p in MCCModule(512).parameters()) == 1_050_624
    model = build(model_section(name="mccnet"))
    assert param_counts(model)["transform"] == 1_050_624
    assert not hasattr(model.transform.MCCN, "h")


def test_layout_is_the_reference_minus_h() -> None:
    model = build(model_section(name="mccnet"))
    assert shapes(model.transform) == {k: v for k, v in REFERENCE_TRANSFORM.items() if k not in UNUSED_H}
    # encoder: the reference VGG's first 31 modules (to relu4_1, all the module reads); the reference decoder
    assert len(model.encoder) == 31 and model.encoder.tap_names[-1] == "relu4_1"
    full = shapes(torch.nn.Sequential(*vgg_normalised_layers(1.0)))
    assert shapes(model.encoder) == {k: v for k, v in full.items() if int(k.split(".")[0]) < 31}
    assert shapes(model.decoder) == shapes(Decoder(512, DECODER_WIDTHS))


def test_official_transform_file_loads_strictly_dropping_only_h(tmp_path: Path) -> None:
    path = tmp_path / "mcc_module_iter_160000.pth"
    state = official_transform_file(path)
    model = build(model_section(name="mccnet", transform_weights=str(path)))
    loaded = model.transform.state_dict()
    assert set(loaded) == set(state) - UNUSED_H
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    # h is accepted only from an official file: loading a state with it into the model part is refused
    with pytest.raises(WeightsError, match=r"unexpected key 'MCCN.h.weight'"):
        load_checked(model.transform, state, "a distst state")


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s.update({"MCCN.fc.weight": torch.zeros(512, 256)}),
     r"shape of 'MCCN.fc.weight': file has \(512, 256\), model expects \(512, 512\)"),
    (lambda s: s.pop("MCCN.out_conv.bias"), r"missing key 'MCCN.out_conv.bias'"),
    (lambda s: s.update({"MCCN.k.weight": torch.zeros(512, 512, 1, 1)}), r"unexpected key 'MCCN.k.weight'"),
    (lambda s: s.update({"sanet4_1.f.weight": s.pop("MCCN.f.weight")}), r"missing key 'MCCN.f.weight'"),
])
def test_a_wrong_transform_file_is_refused_naming_the_key(tmp_path: Path, change, message: str) -> None:
    state = official_transform_file(tmp_path / "ok.pth")
    change(state)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=message):
        build(model_section(name="mccnet", transform_weights=str(tmp_path / "bad.pth")))


# --- the module against closed forms ----------------------------------------------------------

def test_channel_statistic_by_hand() -> None:
    projected = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 4.0, 1.0]]).view(1, 2, 1, 3)
    expected = torch.tensor([[(1 + 4 + 9) / (1 + 2 + 3), (1 + 16 + 1) / (-1 + 4 + 1)]])
    assert torch.allclose(channel_statistic(projected), expected)


def test_channel_statistic_of_projected_normalised_style_is_mean_square_over_bias() -> None:
    # g reads zero-mean channels, so sum(G) = positions x bias
    module = MCCModule(4, key_channels=3, style_channels=3)
    style = torch.randn(2, 4, 5, 6)
    projected = module.g(mean_variance_norm(style))
    expected = projected.square().mean(dim=(2, 3)) / module.g.bias
    assert torch.allclose(channel_statistic(projected), expected, rtol=1e-4)


def test_module_forward_with_identity_weights_by_hand() -> None:
    module = MCCModule(2)
    with torch.no_grad():
        for layer in (module.f, module.g, module.out_conv):
            layer.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            layer.bias.zero_()
        module.g.bias.copy_(torch.tensor([1.0, 2.0]))
        module.fc.weight.copy_(torch.eye(2))
        module.fc.bias.zero_()
    # style: each channel is (x, x + 2) at two positions -> normalised +-z with z^2 = 1 / (2 + 1e-5)
    style = torch.tensor([[0.0, 2.0], [5.0, 7.0]]).view(1, 2, 1, 2)
    z2 = 1 / (2 + 1e-5)
    fc_s = torch.tensor([(z2 + 1) / 1, (z2 + 4) / 2])  # (mean of (b +- z)^2) / b, b = 1 and 2
    # content: channel 0 is (1, 3), channel 1 is (4, 4): normalised (-z, +z) and (0, 0)
    content = torch.tensor([[1.0, 3.0], [4.0, 4.0]]).view(1, 2, 1, 2)
    z = math.sqrt(z2)
    expected = content + torch.tensor([[-z, z], [0.0, 0.0]]).view(1, 2, 1, 2) * fc_s.view(1, 2, 1, 1)
    assert torch.allclose(module(content, style), expected, atol=1e-6)


def test_module_forward_equals_its_closed_form_with_random_weights() -> None:
    torch.manual_seed(0)
    module = MCCModule(3, key_channels=5, style_channels=4)  # widths unlike the channels: reshapes must not read C
    content, style = torch.randn(2, 3, 4, 3), torch.randn(2, 3, 2, 5)
    wf, wg, wo = (m.weight.flatten(1) for m in (module.f, module.g, module.out_conv))
    keys = torch.einsum("kc,nchw->nkhw", wf, mean_variance_norm(content)) + module.f.bias.view(1, -1, 1, 1)
    g = torch.einsum("kc,nchw->nkhw", wg, mean_variance_norm(style)) + module.g.bias.view(1, -1, 1, 1)
    fc_s = (g ** 2).sum(dim=(2, 3)) / g.sum(dim=(2, 3)) @ module.fc.weight.T + module.fc.bias  # N x K
    expected = (content + torch.einsum("ck,nkhw->nchw", wo, keys * fc_s[:, :, None, None])
                + module.out_conv.bias.view(1, -1, 1, 1))
    assert torch.allclose(module(content, style), expected, atol=1e-4)


def test_total_variation_by_hand() -> None:
    image = torch.tensor([[1.0, 4.0], [0.0, 2.0]]).view(1, 1, 2, 2)
    # horizontal |4-1| + |2-0|, vertical |0-1| + |2-4|
    assert total_variation(image).item() == pytest.approx(3 + 2 + 1 + 2)


# --- losses, plans, alpha ---------------------------------------------------------------------

def test_loss_terms_are_finite_with_their_configured_weights() -> None:
    torch.manual_seed(0)
    model = build(model_section(name="mccnet", width=0.125))
    assert model.loss_weights() == {"noise": 3000.0, "content": 3.0, "style": 10.0, "identity1": 70.0,
                                    "identity2": 1.0, "tv": 1e-4}
    custom = build(model_section(name="mccnet", width=0.125, noise_weight=5.0, tv_weight=0.0))
    assert custom.loss_weights()["noise"] == 5.0 and custom.loss_weights()["tv"] == 0.0
    loss_net = model.loss_network()
    assert loss_net.tap_names[-1] == "relu5_1" and not any(p.requires_grad for p in loss_net.parameters())
    content, style = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    torch.manual_seed(1)
    terms = model.loss_terms(content, style, loss_net)
    assert set(terms) == set(model.loss_weights())
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    assert terms["noise"] > 0 and terms["tv"] > 0
    # the noise is drawn from torch's RNG: the same seed gives the same term, another seed another one
    torch.manual_seed(1)
    assert torch.equal(model.loss_terms(content, style, loss_net)["noise"], terms["noise"])
    torch.manual_seed(2)
    assert not torch.equal(model.loss_terms(content, style, loss_net)["noise"], terms["noise"])
    errors = model.errors(content, style, loss_net)
    assert set(errors) == {"content_error", "style_error", "identity_error"}
    assert all(e.shape == (2,) and torch.all(e >= 0) for e in errors.values())


def test_loss_vgg_continues_the_encoder_as_built() -> None:
    model = build(model_section(name="mccnet", width=0.125))
    loss_state, encoder_state = model.loss_network().state_dict(), model.encoder.state_dict()
    assert len(loss_state) > len(encoder_state)
    assert all(torch.equal(loss_state[k], v) for k, v in encoder_state.items())


def test_a_narrower_plan_builds_trains_and_runs() -> None:
    plan = {"encoder": {"conv4_1": 40, "conv3_1": 20}, "transform": {"MCCN.f": 6, "MCCN.g": 5},
            "decoder": {"conv3_4": 7}}
    model = build(model_section(name="mccnet", width=0.125, plan=plan))
    mcc = model.transform.MCCN
    assert model.encoder.out_channels == 40 and model.decoder.conv_layers()["conv3_4"].in_channels == 40
    assert (mcc.f.out_channels, mcc.fc.out_features, mcc.out_conv.in_channels) == (6, 6, 6)
    assert (mcc.g.out_channels, mcc.fc.in_features) == (5, 5)
    assert mcc.out_conv.out_channels == 40
    content, style = torch.rand(1, 3, 32, 40), torch.rand(1, 3, 48, 32)
    assert model(content, style).shape == (1, 3, 32, 40)
    terms = model.loss_terms(content, content, model.loss_network())
    sum(model.loss_weights()[k] * v for k, v in terms.items()).backward()
    assert mcc.fc.weight.grad is not None and model.decoder[1].weight.grad is not None


def test_alpha_zero_decodes_the_content_on_content_module_output() -> None:
    model = build(model_section(name="mccnet", width=0.125)).eval()
    content, style, other = (torch.rand(1, 3, 32, 32) for _ in range(3))
    with torch.no_grad():
        feats = model.encoder(content)[-1]
        identity = model.transform(feats, feats)
        assert torch.equal(model(content, style, alpha=0.0), model.decoder(identity))
        assert torch.equal(model(content, style, alpha=0.0), model(content, other, alpha=0.0))
        stylized = model.transform(feats, model.encoder(style)[-1])
        assert torch.allclose(model(content, style, alpha=0.25), model.decoder(0.25 * stylized + 0.75 * identity),
                              atol=1e-6)


def test_sizes_must_be_multiples_of_8() -> None:
    model = build(model_section(name="mccnet", width=0.125))
    image = torch.rand(1, 3, 36, 36)
    with pytest.raises(ValueError, match="multiples of 8.*36x36"):
        model(image, image)


def test_transform_macs_closed_form() -> None:
    model = build(model_section(name="mccnet", width=0.125))
    positions, channels = (64 // 8) ** 2, 64  # relu4_1 of a 64 px image; f, g, out_conv on it, fc once
    assert macs(model, 64)["transform"] == 3 * positions * channels * channels + channels * channels


# --- the commands ------------------------------------------------------------------------------



def test_stylize_with_official_format_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = build(model_section(name="mccnet", width=0.125))
    torch.save(torch.nn.Sequential(*vgg_normalised_layers(0.125)).state_dict(), tmp_path / "vgg.pth")
    torch.save(reference.decoder.state_dict(), tmp_path / "decoder.pth")
    transform = {**reference.transform.state_dict(), "MCCN.h.weight": torch.zeros(64, 64, 1, 1),
                 "MCCN.h.bias": torch.zeros(64)}
    torch.save(transform, tmp_path / "mcc.pth")
    content, style = write_image(tmp_path / "c.png", 44, 36, 1), write_image(tmp_path / "s.png", 40, 40, 2)
    files = ["--vgg", str(tmp_path / "vgg.pth"), "--decoder", str(tmp_path / "decoder.pth"),
             "--transform", str(tmp_path / "mcc.pth")]
    out = tmp_path / "out.png"
    assert main(["stylize", "--model", "mccnet", "--width", "0.125", "--content", str(content), "--style", str(style),
                 *files, "--content-size", "32", "--style-size", "32", "--out", str(out)]) == 0
    model = build(model_section(name="mccnet", width=0.125, vgg_weights=str(tmp_path / "vgg.pth"),
                                decoder_weights=str(tmp_path / "decoder.pth"),
                                transform_weights=str(tmp_path / "mcc.pth"))).eval()
    with torch.no_grad():
        expected = model(load_image(content, 32, 8, 16)[None], load_image(style, 32, 8, 16)[None])[0]
    with Image.open(out) as img:
        written = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float() / 255
    assert written.shape == (3, 32, 32)  # 44x36 -> 39x32, cropped to multiples of 8
    assert torch.allclose(written, expected.clamp(0, 1), atol=1 / 255 + 1e-4)


def test_models_command_reports_mccnet(capsys: pytest.CaptureFixture) -> None:
    import json

    assert main(["models", "--json", "--width", "0.125"]) == 0
    row = {r["model"]: r for r in json.loads(capsys.readouterr().out)}["mccnet"]
    model = build(model_section(name="mccnet", width=0.125))
    assert row["params"] == param_counts(model) and row["input_multiple"] == 8
    assert row["macs_256"]["transform"] == 3 * 32 * 32 * 64 * 64 + 64 * 64
    assert row["macs_512"]["total"] > row["macs_256"]["total"] > 0


def test_encoder_is_only_the_layers_the_module_reads() -> None:
    model = build(model_section(name="mccnet", width=0.125))
    assert isinstance(model.encoder, VGGEncoder) and model.encoder.depth == "relu4_1"
    assert isinstance(model.transform, MCCTransform)


@pytest.mark.slow
def test_one_training_step_logs_every_term_and_keeps_the_encoder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(out, model__name="mccnet", train__steps=1, train__eval_every=1, train__checkpoint_every=1)
    torch.manual_seed(cfg.train.seed)
    before = build(cfg.model).state_dict()
    train(cfg, out)
    after = load_model(out)[0].state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]) == key.startswith("encoder."), key
    rows = read_metrics(out / "metrics.jsonl")
    assert {"noise", "content", "style", "identity1", "identity2", "tv"} <= set(rows[0])
    evaluation = next(r for r in rows if "total_error" in r)
    assert evaluation["total_error"] == pytest.approx(
        evaluation["content_error"] + evaluation["style_error"] + evaluation["identity_error"])
