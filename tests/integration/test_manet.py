"""MANet: the reference layout (official files load strictly), the module against a plain re-statement of the
reference code and a closed form, the disentanglement terms as the reference code computes them, alpha, and
``distst stylize`` with official-layout files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import write_image
from PIL import Image

from distst.cli import main
from distst.config import model_section
from distst.images import load_image
from distst.models import WeightsError, build, param_counts
from distst.models.decoder import REFERENCE_WIDTHS as DECODER_WIDTHS
from distst.models.decoder import Decoder
from distst.models.manet import MultiAdaptationModule, StyleChannelAttention
from distst.models.stats import calc_mean_std, mean_std_loss
from distst.models.vgg import VGGEncoder, vgg_normalised_layers

# The reference's ma_module_iter_*.pth (Multi_Adaptation_Module(512)): key -> shape.
REFERENCE_TRANSFORM = {f"{part}.{conv}.{kind}": (512, 512, 1, 1) if kind == "weight" else (512,)
                       for part in ("CA", "CSA", "SSA") for conv in ("f", "g", "h", "out_conv")
                       for kind in ("weight", "bias")}


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# --- the reference code, re-stated plainly (function.py's normal, net.py's CA / Style_SA / Content_SA) --------

def normal(feat: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    n, c = feat.shape[:2]
    var = feat.view(n, c, -1).var(dim=2) + eps
    mean = feat.view(n, c, -1).mean(dim=2).view(n, c, 1, 1)
    return (feat - mean) / var.sqrt().view(n, c, 1, 1)


def conv(state: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, state[f"{name}.weight"], state[f"{name}.bias"])


def reference_ca(state: dict, part: str, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """``CA`` and ``Content_SA`` (the latter with style = content)."""
    b, c, h, w = content.shape
    query = conv(state, f"{part}.f", normal(content)).view(b, -1, h * w).permute(0, 2, 1)
    bs, cs, hs, ws = style.shape
    key = conv(state, f"{part}.g", normal(style)).view(bs, -1, hs * ws)
    attention = torch.softmax(torch.bmm(query, key), dim=-1)
    value = conv(state, f"{part}.h", style).view(bs, -1, hs * ws)
    out = torch.bmm(value, attention.permute(0, 2, 1)).view(b, c, h, w)
    return conv(state, f"{part}.out_conv", out) + content


def reference_ssa(state: dict, style: torch.Tensor) -> torch.Tensor:
    b, c, h, w = style.shape
    f_ = conv(state, "SSA.f", style).view(b, -1, h * w)
    g_ = conv(state, "SSA.g", style).view(b, -1, h * w).permute(0, 2, 1)
    attention = torch.softmax(torch.bmm(f_, g_), dim=-1)
    value = conv(state, "SSA.h", normal(style)).view(b, -1, h * w)
    out = torch.bmm(attention.permute(0, 2, 1), value).view(b, c, h, w)
    return conv(state, "SSA.out_conv", out) + style


def reference_mam(state: dict, content4_1: torch.Tensor, style4_1: torch.Tensor) -> torch.Tensor:
    return reference_ca(state, "CA", reference_ca(state, "CSA", content4_1, content4_1), reference_ssa(state, style4_1))


def official_transform_file(path: Path, channels: int = 512, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn((channels, channels, 1, 1) if len(shape) == 4 else (channels,), generator=generator) * 0.05
             for k, shape in REFERENCE_TRANSFORM.items()}
    torch.save(state, path)
    return state


# --- layout and counts ------------------------------------------------------------------------

def test_parameter_counts_are_the_references() -> None:
    model = build(model_section(name="manet"))
    counts = param_counts(model)
    assert counts["transform"] == 3_151_872  # 12 convs 512 -> 512, 1x1
    assert counts["transform"] + counts["decoder"] == 6_657_091  # what the reference trains
    assert counts["encoder"] == 3_505_740  # vgg_normalised to relu4_1, all the module reads
    assert shapes(model.transform) == REFERENCE_TRANSFORM
    assert len(model.encoder) == 31 and model.encoder.tap_names[-1] == "relu4_1"
    assert shapes(model.decoder) == shapes(Decoder(512, DECODER_WIDTHS))
    assert model.loss_network().tap_names[-1] == "relu5_1"


def test_official_transform_file_loads_strictly(tmp_path: Path) -> None:
    state = official_transform_file(tmp_path / "ma_module_iter_160000.pth")
    model = build(model_section(name="manet", transform_weights=str(tmp_path / "ma_module_iter_160000.pth")))
    loaded = model.transform.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in loaded)


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s.pop("SSA.h.bias"), r"missing key 'SSA.h.bias'"),
    (lambda s: s.update({"SSA.f.weight": torch.zeros(256, 512, 1, 1)}),
     r"shape of 'SSA.f.weight': file has \(256, 512, 1, 1\), model expects \(512, 512, 1, 1\)"),
    (lambda s: s.update({"module.CA.f.weight": s.pop("CA.f.weight")}), r"missing key 'CA.f.weight'"),
])
def test_a_wrong_transform_file_is_refused_naming_the_key(tmp_path: Path, change, message: str) -> None:
    state = official_transform_file(tmp_path / "ok.pth")
    change(state)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=message):
        build(model_section(name="manet", transform_weights=str(tmp_path / "bad.pth")))


# --- the module against the reference and a closed form -----------------------------------------

def test_module_equals_the_reference_code_on_random_weights(tmp_path: Path) -> None:
    state = official_transform_file(tmp_path / "ma.pth", channels=16, seed=3)
    module = MultiAdaptationModule(16)
    module.load_state_dict(state)
    g = torch.Generator().manual_seed(4)
    content, style = torch.rand(2, 16, 4, 5, generator=g), torch.rand(2, 16, 6, 3, generator=g)  # sizes differ
    with torch.no_grad():
        assert torch.allclose(module(content, style), reference_mam(state, content, style), atol=1e-5)


def test_whole_model_equals_the_reference_pipeline(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build(model_section(name="manet", width=0.125)).eval()
    state = {k.removeprefix("transform."): v for k, v in model.state_dict().items() if k.startswith("transform.")}
    vgg = torch.nn.Sequential(*vgg_normalised_layers(0.125))  # the reference vgg, sliced as its Net does
    vgg.load_state_dict({**vgg.state_dict(), **model.encoder.state_dict()})
    content, style = torch.rand(1, 3, 32, 40), torch.rand(1, 3, 48, 32)
    with torch.no_grad():
        expected = model.decoder(reference_mam(state, vgg[:31](content), vgg[:31](style)))
        assert torch.allclose(model(content, style), expected, atol=1e-5)


def test_style_channel_attention_closed_form_with_identity_convs() -> None:
    module = StyleChannelAttention(3)
    with torch.no_grad():
        for layer in (module.f, module.g, module.h, module.out_conv):
            layer.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            layer.bias.zero_()
    style = torch.rand(1, 3, 2, 4)
    flat = style.flatten(2)[0]  # C x HW
    attention = torch.softmax(flat @ flat.T, dim=-1)  # channel i attends to channel j
    mean, std = calc_mean_std(style)
    normalised = ((style - mean) / std).flatten(2)[0]
    expected = (attention.T @ normalised).view(1, 3, 2, 4) + style
    assert torch.allclose(module(style), expected, atol=1e-6)


# --- losses and alpha --------------------------------------------------------------------------

def test_loss_weights_and_terms() -> None:
    torch.manual_seed(0)
    model = build(model_section(name="manet", width=0.125))
    assert model.loss_weights() == {"content": 1.0, "style": 5.0, "identity1": 50.0, "identity2": 1.0,
                                    "disentangle_content": 1.0, "disentangle_style": 1.0}
    loss_net = model.loss_network()
    content, style = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    torch.manual_seed(5)
    terms = model.loss_terms(content, style, loss_net)
    assert set(terms) == set(model.loss_weights())
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    errors = model.errors(content, style, loss_net)
    assert set(errors) == {"content_error", "style_error", "identity_error"}


def test_disentanglement_terms_are_the_reference_codes() -> None:
    """Two random orders of one batch of stylisations (each content with the next image's style, and each style
    with the next image's content), drawn from torch's RNG in the reference's order; zero once content + style
    (weighted) reach the threshold."""
    torch.manual_seed(0)
    model = build(model_section(name="manet", width=0.125, disentangle_below=1e9))
    loss_net = model.loss_network()
    content, style = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    torch.manual_seed(7)
    terms = model.loss_terms(content, style, loss_net)
    with torch.no_grad():
        c4, s4 = model.encoder(content)[-1], model.encoder(style)[-1]
        ics1 = loss_net(model.decoder(model.transform(c4, s4.roll(1, 0))))
        ic1s = loss_net(model.decoder(model.transform(c4.roll(1, 0), s4)))
    torch.manual_seed(7)
    perm = lambda: torch.randperm(3)  # noqa: E731 - the reference's shuffle, one call each
    expected_c = 0.0
    for i in (4, 3):  # relu5_1, then relu4_1, as dis_loss_c
        a, b = perm(), perm()
        expected_c += F.mse_loss(normal(ic1s[i][a]), normal(ic1s[i][b]))
    expected_s = 0.0
    for feat in ics1:
        a, b = perm(), perm()
        expected_s += mean_std_loss(feat[a], feat[b])
    assert float(terms["disentangle_content"].detach()) == pytest.approx(float(expected_c), rel=1e-4)
    assert float(terms["disentangle_style"].detach()) == pytest.approx(float(expected_s), rel=1e-4)
    assert terms["disentangle_style"] > 0
    off = build(model_section(name="manet", width=0.125, disentangle_below=1e-9))
    off.load_state_dict(model.state_dict())
    gated = off.loss_terms(content, style, loss_net)
    assert gated["disentangle_content"] == 0 and gated["disentangle_style"] == 0


def test_alpha_zero_decodes_the_content_on_content_module_output() -> None:
    model = build(model_section(name="manet", width=0.125)).eval()
    content, style = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        feats = model.encoder(content)[-1]
        identity, stylized = model.transform(feats, feats), model.transform(feats, model.encoder(style)[-1])
        assert torch.equal(model(content, style, alpha=0.0), model.decoder(identity))
        assert torch.allclose(model(content, style, alpha=0.25), model.decoder(0.25 * stylized + 0.75 * identity),
                              atol=1e-6)


def test_a_narrower_plan_builds_and_runs() -> None:
    plan = {"encoder": {"conv4_1": 40}, "transform": {"CSA.key": 6, "CSA.value": 7, "SSA.key": 5, "SSA.value": 9,
                                                      "CA.key": 4, "CA.value": 3}}
    model = build(model_section(name="manet", width=0.125, plan=plan))
    ssa = model.transform.SSA
    assert (ssa.f.out_channels, ssa.h.out_channels, ssa.g.out_channels, ssa.out_conv.in_channels) == (5, 5, 9, 9)
    assert model.transform.CA.out_conv.out_channels == 40
    assert model(torch.rand(2, 3, 32, 40), torch.rand(2, 3, 48, 32)).shape == (2, 3, 32, 40)


# --- the commands ------------------------------------------------------------------------------



def test_stylize_with_official_format_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = build(model_section(name="manet", width=0.125))
    torch.save(torch.nn.Sequential(*vgg_normalised_layers(0.125)).state_dict(), tmp_path / "vgg_normalised.pth")
    torch.save(reference.decoder.state_dict(), tmp_path / "decoder_iter_160000.pth")
    torch.save(reference.transform.state_dict(), tmp_path / "ma_module_iter_160000.pth")
    content, style = write_image(tmp_path / "c.png", 44, 36, 1), write_image(tmp_path / "s.png", 40, 40, 2)
    files = {"vgg_weights": "vgg_normalised.pth", "decoder_weights": "decoder_iter_160000.pth",
             "transform_weights": "ma_module_iter_160000.pth"}
    flags = [arg for key, name in files.items() for arg in (f"--{key.split('_')[0]}", str(tmp_path / name))]
    out = tmp_path / "out.png"
    assert main(["stylize", "--model", "manet", "--width", "0.125", "--content", str(content), "--style", str(style),
                 *flags, "--content-size", "32", "--style-size", "32", "--out", str(out)]) == 0
    model = build(model_section(name="manet", width=0.125,
                                **{key: str(tmp_path / name) for key, name in files.items()})).eval()
    with torch.no_grad():
        expected = model(load_image(content, 32, 8, 16)[None], load_image(style, 32, 8, 16)[None])[0]
    with Image.open(out) as img:
        written = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float() / 255
    assert written.shape == (3, 32, 32)
    assert torch.allclose(written, expected.clamp(0, 1), atol=1 / 255 + 1e-4)


def test_encoder_is_only_the_layers_the_module_reads() -> None:
    model = build(model_section(name="manet", width=0.125))
    assert isinstance(model.encoder, VGGEncoder) and model.encoder.depth == "relu4_1"
    assert isinstance(model.transform, MultiAdaptationModule)
