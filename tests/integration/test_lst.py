"""LST: the reference layouts (official files load strictly, wrong ones are refused naming the key), parameter
counts, the forward against a plain re-statement of the reference code, the losses and errors against closed
forms, the r31 variant, the decoder's auto/frozen/trainable, the loss network, couplings for channel pruning,
``distst stylize``, ONNX export and a tiny ``distst imp`` of the local job, at tiny sizes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, read_image, write_image

from distst.cli import main
from distst.config import ConfigError, build_config, model_section
from distst.images import load_image
from distst.models import PlanError, WeightsError, build, param_counts
from distst.models.io import load_model, save_model
from distst.models.lst import LST, gram, mean_gram_error, mean_gram_loss
from distst.models.vgg import vgg_normalised_layers
from distst.prune.channels.surgery import _group, _out_channel_targets, dependency_graph

WIDTH = 0.125


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors this small gain nothing from a second thread, and on a shared machine two threads spin against
    other processes (seconds per forward instead of milliseconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the official layouts, written out from the reference code (libs/models.py, libs/Matrix.py) ---------------

def _convs(specs: list[tuple[str, int, int, int]]) -> dict[str, tuple[int, ...]]:
    """(name, in, out, kernel) rows -> state-dict key -> shape."""
    out: dict[str, tuple[int, ...]] = {}
    for name, c_in, c_out, k in specs:
        out[f"{name}.weight"], out[f"{name}.bias"] = (c_out, c_in, k, k), (c_out,)
    return out


ENCODER5_ROWS = [("conv1", 3, 3, 1), ("conv2", 3, 64, 3), ("conv3", 64, 64, 3), ("conv4", 64, 128, 3),
                 ("conv5", 128, 128, 3), ("conv6", 128, 256, 3), ("conv7", 256, 256, 3), ("conv8", 256, 256, 3),
                 ("conv9", 256, 256, 3), ("conv10", 256, 512, 3), ("conv11", 512, 512, 3), ("conv12", 512, 512, 3),
                 ("conv13", 512, 512, 3), ("conv14", 512, 512, 3)]
VGG_R51 = _convs(ENCODER5_ROWS)                  # vgg_r51.pth (encoder5, the loss network)
VGG_R41 = _convs(ENCODER5_ROWS[:10])             # vgg_r41.pth (encoder4)
VGG_R31 = _convs(ENCODER5_ROWS[:6])              # vgg_r31.pth (encoder3)
DEC_R41 = _convs([("conv11", 512, 256, 3), ("conv12", 256, 256, 3), ("conv13", 256, 256, 3), ("conv14", 256, 256, 3),
                  ("conv15", 256, 128, 3), ("conv16", 128, 128, 3), ("conv17", 128, 64, 3), ("conv18", 64, 64, 3),
                  ("conv19", 64, 3, 3)])         # dec_r41.pth (decoder4)
DEC_R31 = _convs([("conv7", 256, 128, 3), ("conv8", 128, 128, 3), ("conv9", 128, 64, 3), ("conv10", 64, 64, 3),
                  ("conv11", 64, 3, 3)])         # dec_r31.pth (decoder3)


def _mul_layer(channels: int, first: int, second: int, m: int = 32) -> dict[str, tuple[int, ...]]:
    """MulLayer(layer, matrixSize=m): snet and cnet (CNN: convs.0/2/4 and fc), compress, unzip."""
    out: dict[str, tuple[int, ...]] = {}
    for net in ("snet", "cnet"):
        rows = [(f"{net}.convs.0", channels, first, 3), (f"{net}.convs.2", first, second, 3), (f"{net}.convs.4", second, m, 3)]
        out.update(_convs(rows))
        out[f"{net}.fc.weight"], out[f"{net}.fc.bias"] = (m * m, m * m), (m * m,)
    out.update(_convs([("compress", channels, m, 1), ("unzip", m, channels, 1)]))
    return out


R41 = _mul_layer(512, 256, 128)  # r41.pth
R31 = _mul_layer(256, 128, 64)   # r31.pth


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def count(layout: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(shape) for shape in layout.values())


def random_file(path: Path, layout: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=g) * 0.02 for k, shape in layout.items()}
    torch.save(state, path)
    return state


# --- layout and counts ------------------------------------------------------------------------

def test_parameter_counts_per_part_are_the_references() -> None:
    r41 = build(model_section(name="lst"))
    assert param_counts(r41) == {"encoder": 3_505_740, "transform": 5_156_192, "decoder": 3_505_219,
                                 "total": 3_505_740 + 5_156_192 + 3_505_219}
    mul = r41.transform
    assert sum(p.numel() for p in mul.cnet.parameters()) == sum(p.numel() for p in mul.snet.parameters()) == 2_561_440
    assert sum(p.numel() for p in mul.cnet.fc.parameters()) == 1_049_600
    assert sum(p.numel() for p in mul.compress.parameters()) == 16_416
    assert sum(p.numel() for p in mul.unzip.parameters()) == 16_896
    r31 = build(model_section(name="lst", layer="r31"))
    assert param_counts(r31) == {"encoder": 555_340, "transform": 2_890_464, "decoder": 555_075,
                                 "total": 555_340 + 2_890_464 + 555_075}
    # the written-out layouts say the same
    assert (count(VGG_R41), count(R41), count(DEC_R41)) == (3_505_740, 5_156_192, 3_505_219)
    assert (count(VGG_R31), count(R31), count(DEC_R31)) == (555_340, 2_890_464, 555_075)


@pytest.mark.parametrize(("layer", "encoder", "transform", "decoder"),
                         [("r41", VGG_R41, R41, DEC_R41), ("r31", VGG_R31, R31, DEC_R31)])
def test_the_parts_have_the_official_layouts(layer, encoder, transform, decoder) -> None:
    model = build(model_section(name="lst", layer=layer))
    assert shapes(model.encoder) == encoder
    assert shapes(model.transform) == transform
    assert shapes(model.decoder) == decoder
    assert shapes(model.loss_network()) == VGG_R51
    assert not any(p.requires_grad for p in model.loss_network().parameters())


def test_official_files_load_strictly(tmp_path: Path) -> None:
    files = {key: tmp_path / f"{key}.pth" for key in ("vgg", "dec", "mul", "loss")}
    states = {"vgg": random_file(files["vgg"], VGG_R41, 1), "dec": random_file(files["dec"], DEC_R41, 2),
              "mul": random_file(files["mul"], R41, 3), "loss": random_file(files["loss"], VGG_R51, 4)}
    model = build(model_section(name="lst", vgg_weights=str(files["vgg"]), decoder_weights=str(files["dec"]),
                                transform_weights=str(files["mul"]), loss_vgg_weights=str(files["loss"])))
    for part, key in ((model.encoder, "vgg"), (model.decoder, "dec"), (model.transform, "mul"),
                      (model.loss_network(), "loss")):
        loaded = part.state_dict()
        assert set(loaded) == set(states[key]) and all(torch.equal(loaded[k], states[key][k]) for k in loaded), key


@pytest.mark.parametrize(("key", "layout", "change", "message"), [
    ("vgg_weights", VGG_R41, lambda s: s.pop("conv10.bias"), r"missing key 'conv10.bias'"),
    ("vgg_weights", VGG_R41, lambda s: s.update({"conv11.weight": torch.zeros(512, 512, 3, 3)}),
     r"unexpected key 'conv11.weight'"),
    ("decoder_weights", DEC_R41, lambda s: s.update({"conv11.weight": torch.zeros(256, 256, 3, 3)}),
     r"shape of 'conv11.weight': file has \(256, 256, 3, 3\), model expects \(256, 512, 3, 3\)"),
    ("transform_weights", R41, lambda s: s.update({"cnet.fc.weight": torch.zeros(512, 1024)}),
     r"shape of 'cnet.fc.weight': file has \(512, 1024\), model expects \(1024, 1024\)"),
    ("transform_weights", R41, lambda s: s.update({"snet.conv.weight": s.pop("snet.convs.0.weight")}),
     r"missing key 'snet.convs.0.weight'"),
    ("loss_vgg_weights", VGG_R51, lambda s: s.pop("conv14.weight"), r"missing key 'conv14.weight'"),
])
def test_a_wrong_file_is_refused_naming_the_key(tmp_path: Path, key, layout, change, message) -> None:
    state = random_file(tmp_path / "ok.pth", layout, 0)
    change(state)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=message):
        model = build(model_section(name="lst", **{key: str(tmp_path / "bad.pth")}))
        model.loss_network()  # the loss network's file is read when the network is made


def test_a_vgg_normalised_file_loads_as_the_encoder_and_the_loss_network(tmp_path: Path) -> None:
    torch.manual_seed(3)
    full = torch.nn.Sequential(*vgg_normalised_layers(WIDTH))
    torch.save(full.state_dict(), tmp_path / "vgg_normalised.pth")
    model = build(model_section(name="lst", width=WIDTH, vgg_weights=str(tmp_path / "vgg_normalised.pth")))
    loss_net = model.loss_network()
    # module indices of the 53-module layout: 0 (1x1), then the 3x3 convs conv1_1 ... conv5_1
    indices = [0, 2, 5, 9, 12, 16, 19, 22, 25, 29, 32, 35, 38, 42]
    for number, index in enumerate(indices, start=1):
        assert torch.equal(loss_net.state_dict()[f"conv{number}.weight"], full[index].weight)
        if number <= 10:
            assert torch.equal(model.encoder.state_dict()[f"conv{number}.weight"], full[index].weight)


# --- the forward against the reference code, restated ----------------------------------------

def _conv(s: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), s[f"{name}.weight"], s[f"{name}.bias"])


def ref_encoder(s: dict, x: torch.Tensor, last: str) -> dict[str, torch.Tensor]:
    """encoder3/4/5.forward: conv1 (1x1), reflect-padded 3x3 convs with ReLU, floor 2x2 max pools."""
    out = {}
    x = F.conv2d(x, s["conv1.weight"], s["conv1.bias"])
    out["r11"] = F.relu(_conv(s, "conv2", x))
    x = F.max_pool2d(F.relu(_conv(s, "conv3", out["r11"])), 2, 2)
    out["r21"] = F.relu(_conv(s, "conv4", x))
    x = F.max_pool2d(F.relu(_conv(s, "conv5", out["r21"])), 2, 2)
    out["r31"] = F.relu(_conv(s, "conv6", x))
    if last == "r31":
        return out
    x = F.relu(_conv(s, "conv7", out["r31"]))
    x = F.relu(_conv(s, "conv8", x))
    x = F.max_pool2d(F.relu(_conv(s, "conv9", x)), 2, 2)
    out["r41"] = F.relu(_conv(s, "conv10", x))
    if last == "r41":
        return out
    x = F.relu(_conv(s, "conv11", out["r41"]))
    x = F.relu(_conv(s, "conv12", x))
    x = F.max_pool2d(F.relu(_conv(s, "conv13", x)), 2, 2)
    out["r51"] = F.relu(_conv(s, "conv14", x))
    return out


def ref_decoder(s: dict, x: torch.Tensor, layer: str) -> torch.Tensor:
    """decoder4.forward (conv11..conv19) / decoder3.forward (conv7..conv11): nearest 2x after the listed convs."""
    convs, ups = ((range(11, 19), {11, 15, 17}) if layer == "r41" else (range(7, 11), {7, 9}))
    for number in convs:
        x = F.relu(_conv(s, f"conv{number}", x))
        if number in ups:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
    return _conv(s, f"conv{convs[-1] + 1}", x)


def ref_cnn(s: dict, net: str, x: torch.Tensor) -> torch.Tensor:
    out = F.relu(F.conv2d(x, s[f"{net}.convs.0.weight"], s[f"{net}.convs.0.bias"], padding=1))
    out = F.relu(F.conv2d(out, s[f"{net}.convs.2.weight"], s[f"{net}.convs.2.bias"], padding=1))
    out = F.conv2d(out, s[f"{net}.convs.4.weight"], s[f"{net}.convs.4.bias"], padding=1)
    b, c, h, w = out.size()
    out = out.view(b, c, -1)
    out = torch.bmm(out, out.transpose(1, 2)).div(h * w)
    out = out.view(out.size(0), -1)
    return F.linear(out, s[f"{net}.fc.weight"], s[f"{net}.fc.bias"])


def ref_mul_layer(s: dict, cF: torch.Tensor, sF: torch.Tensor, matrix_size: int) -> torch.Tensor:  # noqa: N803
    """MulLayer.forward(cF, sF, trans=True), its first output."""
    cb, cc, ch, cw = cF.size()
    cMean = torch.mean(cF.view(cb, cc, -1), dim=2, keepdim=True).unsqueeze(3).expand_as(cF)  # noqa: N806
    cF = cF - cMean  # noqa: N806
    sb, sc, sh, sw = sF.size()
    sMean = torch.mean(sF.view(sb, sc, -1), dim=2, keepdim=True).unsqueeze(3)  # noqa: N806
    sMeanC, sMeanS = sMean.expand_as(cF), sMean.expand_as(sF)  # noqa: N806
    sF = sF - sMeanS  # noqa: N806
    compress_content = F.conv2d(cF, s["compress.weight"], s["compress.bias"])
    b, c, h, w = compress_content.size()
    compress_content = compress_content.view(b, c, -1)
    cMatrix = ref_cnn(s, "cnet", cF).view(cb, matrix_size, matrix_size)  # noqa: N806
    sMatrix = ref_cnn(s, "snet", sF).view(sb, matrix_size, matrix_size)  # noqa: N806
    transmatrix = torch.bmm(sMatrix, cMatrix)
    transfeature = torch.bmm(transmatrix, compress_content).view(b, c, h, w)
    return F.conv2d(transfeature, s["unzip.weight"], s["unzip.bias"]) + sMeanC


def _random_model(**section: object) -> LST:
    torch.manual_seed(0)
    model = build(model_section(name="lst", width=WIDTH, **section)).eval()
    with torch.no_grad():  # non-zero biases everywhere (the He-initialised encoder's are zero)
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(-0.1, 0.1)
    return model  # type: ignore[return-value]


def _states(model: LST) -> tuple[dict, dict, dict]:
    return tuple({k: v.detach().clone() for k, v in part.state_dict().items()}  # type: ignore[return-value]
                 for part in (model.encoder, model.transform, model.decoder))


@pytest.mark.parametrize(("layer", "matrix_size"), [("r41", 32), ("r41", 8), ("r31", 16)])
def test_forward_equals_the_reference_code(layer: str, matrix_size: int) -> None:
    model = _random_model(layer=layer, matrix_size=matrix_size)
    enc, mul, dec = _states(model)
    g = torch.Generator().manual_seed(7)
    content, style = torch.rand(2, 3, 40, 56, generator=g), torch.rand(2, 3, 48, 32, generator=g)
    with torch.no_grad():
        cF, sF = ref_encoder(enc, content, layer)[layer], ref_encoder(enc, style, layer)[layer]  # noqa: N806
        feature = ref_mul_layer(mul, cF, sF, matrix_size)
        expected = ref_decoder(dec, feature, layer)
        assert torch.allclose(model.transform(cF, sF), feature, atol=1e-5)
        out = model(content, style)
        assert out.shape == expected.shape == content.shape
        assert torch.allclose(out, expected, atol=1e-5), float((out - expected).abs().max())
        # alpha: distst's blend of the transformed and the content features
        blended = ref_decoder(dec, 0.3 * feature + 0.7 * cF, layer)
        assert torch.allclose(model(content, style, alpha=0.3), blended, atol=1e-5)


def test_encoder_taps_are_the_references_shallowest_first() -> None:
    model = _random_model()
    enc = _states(model)[0]
    image = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        ours = model.encoder(image)
        ref = ref_encoder(enc, image, "r41")
    assert model.encoder.tap_names == ["relu1_1", "relu2_1", "relu3_1", "relu4_1"]
    for feat, key in zip(ours, ("r11", "r21", "r31", "r41"), strict=True):
        assert torch.allclose(feat, ref[key], atol=1e-6)
    assert ours[-1].shape[-2:] == (4, 5)  # three floor pools: H/8 x W/8
    conv_names = list(model.encoder.conv_layers())
    assert conv_names == ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4",
                          "conv4_1"]
    assert model.encoder.conv_layers()["conv4_1"] is model.encoder.conv10
    decoder = model.decoder.conv_layers()
    assert decoder["conv3_4"] is model.decoder.conv11 and decoder["conv1_1"] is model.decoder.conv18
    assert "rgb" not in model.channel_layers()["decoder"]


# --- losses and errors -----------------------------------------------------------------------

def test_style_loss_and_error_of_one_layer_by_hand() -> None:
    out = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)  # mean 2, Gram (1 + 9) / (1 * 1 * 2) = 5
    ref = torch.zeros(1, 1, 1, 2)
    assert gram(out).item() == pytest.approx(5.0)
    assert mean_gram_loss(out, ref).item() == pytest.approx(2**2 + 5**2)
    # divided by the batch: two copies give the same loss; the error is per sample
    assert mean_gram_loss(out.repeat(2, 1, 1, 1), ref.repeat(2, 1, 1, 1)).item() == pytest.approx(29.0)
    assert torch.allclose(mean_gram_error(out.repeat(2, 1, 1, 1), ref.repeat(2, 1, 1, 1)), torch.tensor([7.0, 7.0]))
    # two channels: Gram entries <f_i, f_j> / (c h w)
    two = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)
    assert torch.allclose(gram(two), torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]) / 4)


def test_loss_terms_and_errors_are_the_reference_criterions() -> None:
    model = _random_model()
    loss_net = model.loss_network()
    loss_state = {k: v.clone() for k, v in loss_net.state_dict().items()}
    g = torch.Generator().manual_seed(2)
    content, style = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        out = model(content, style)
        tF, sF, cF = (ref_encoder(loss_state, x, "r51") for x in (out, style, content))  # noqa: N806
        terms = model.loss_terms(content, style, loss_net)
        errors = model.errors(content, style, loss_net)
    # LossCriterion: MSELoss at r41; styleLoss = summed MSE of means and Grams / batch at r11..r41
    sum_mse = torch.nn.MSELoss(reduction="sum")
    style_loss = 0.0
    style_error = torch.zeros(2)
    for layer in ("r11", "r21", "r31", "r41"):
        b, c, h, w = tF[layer].size()
        i_mean, t_mean = tF[layer].view(b, c, -1).mean(2), sF[layer].view(b, c, -1).mean(2)
        i_flat, t_flat = tF[layer].view(b, c, h * w), sF[layer].view(b, c, h * w)
        i_cov = torch.bmm(i_flat, i_flat.transpose(1, 2)) / (c * h * w)
        t_cov = torch.bmm(t_flat, t_flat.transpose(1, 2)) / (c * h * w)
        style_loss = style_loss + (sum_mse(i_mean, t_mean) + sum_mse(i_cov, t_cov)) / b
        style_error = style_error + (i_mean - t_mean).norm(dim=1) + (i_cov - t_cov).flatten(1).norm(dim=1)
    assert terms["content"].item() == pytest.approx(torch.nn.MSELoss()(tF["r41"], cF["r41"]).item(), rel=1e-5)
    assert terms["style"].item() == pytest.approx(float(style_loss), rel=1e-5)
    assert model.loss_weights() == {"content": 1.0, "style": 0.02}
    assert torch.allclose(errors["content_error"], (tF["r41"] - cF["r41"]).flatten(1).norm(dim=1), rtol=1e-5)
    assert torch.allclose(errors["style_error"], style_error, rtol=1e-5)


def test_the_loss_network_continues_the_encoder_as_built_or_its_file(tmp_path: Path) -> None:
    model = build(model_section(name="lst", width=WIDTH))
    loss_state, encoder_state = model.loss_network().state_dict(), model.encoder.state_dict()
    assert len(loss_state) == 28 and all(torch.equal(loss_state[k], v) for k, v in encoder_state.items())
    assert loss_state["conv14.weight"].abs().sum() > 0  # the rest He-initialised
    # a narrower encoder is not copied (the loss network keeps the reference widths)
    slim = build(model_section(name="lst", width=WIDTH, plan={"encoder": {"conv4_1": 40}}))
    assert slim.loss_network().conv10.out_channels == 64
    # with vgg_weights (vgg_r41 layout) its layers come from the file, for every model built from it
    torch.save(model.encoder.state_dict(), tmp_path / "vgg_r41.pth")
    other = build(model_section(name="lst", width=WIDTH, vgg_weights=str(tmp_path / "vgg_r41.pth")))
    state = other.loss_network().state_dict()
    assert all(torch.equal(state[k], v) for k, v in encoder_state.items())


def test_r31_builds_its_own_plan_and_refuses_r41_layers() -> None:
    model = build(model_section(name="lst", layer="r31", width=WIDTH))
    assert list(model.plan["encoder"])[-1] == "conv3_1" and "conv4_1" not in model.plan["encoder"]
    assert list(model.plan["decoder"]) == ["conv2_2", "conv2_1", "conv1_2", "conv1_1"]
    assert model.encoder.tap_names == ["relu1_1", "relu2_1", "relu3_1"]
    assert model.style_cache.taps == ("relu3_1",)
    with pytest.raises(ConfigError, match=r"model.plan.encoder.conv4_1: lst \(layer r31\) has no resizable layer"):
        build(model_section(name="lst", layer="r31", plan={"encoder": {"conv4_1": 8}}))
    unchecked = model_section(name="lst", layer="r31").model_copy(update={"plan": {"decoder": {"conv3_4": 8}}})
    with pytest.raises(PlanError, match=r"model.plan.decoder.conv3_4: .*valid: conv2_2, conv2_1, conv1_2, conv1_1"):
        LST.resolve_plan(unchecked)
    # the loss network is still encoder5 (content at relu4_1, as the reference's defaults)
    loss_net = model.loss_network()
    assert loss_net.tap_names[-1] == "relu5_1"
    terms = model.loss_terms(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), loss_net)
    assert all(torch.isfinite(t) for t in terms.values())


def test_a_narrower_plan_builds_and_trains() -> None:
    plan = {"encoder": {"conv4_1": 40, "conv3_1": 20}, "transform": {"cnet.convs.0": 6, "snet.convs.2": 5},
            "decoder": {"conv3_4": 7}}
    model = build(model_section(name="lst", width=WIDTH, plan=plan, matrix_size=4))
    mul = model.transform
    assert (mul.compress.in_channels, mul.unzip.out_channels, model.decoder.conv11.in_channels) == (40, 40, 40)
    assert mul.cnet.convs[0].out_channels == 6 and mul.snet.convs[2].out_channels == 5
    assert mul.cnet.fc.in_features == 16 and model.decoder.conv11.out_channels == 7
    content, style = torch.rand(1, 3, 32, 40), torch.rand(1, 3, 48, 32)
    assert model(content, style).shape == (1, 3, 32, 40)
    terms = model.loss_terms(content, style, model.loss_network())
    sum(model.loss_weights()[k] * v for k, v in terms.items()).backward()
    assert mul.snet.fc.weight.grad is not None and model.decoder.conv11.weight.grad is not None


def test_sizes_are_checked() -> None:
    model = build(model_section(name="lst", width=WIDTH))
    with pytest.raises(ValueError, match="multiples of 8.*36x36"):
        model(torch.rand(1, 3, 36, 36), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="at least 32x32, got 24x24"):
        model(torch.rand(1, 3, 24, 24), torch.rand(1, 3, 32, 32))


# --- the decoder's set-up ----------------------------------------------------------------------

@pytest.mark.parametrize(("model_keys", "method", "expected"), [
    ({}, "none", "trainable"),                                         # a random decoder must learn
    ({"decoder_weights": "dec_r41.pth"}, "none", "frozen"),            # the reference set-up
    ({"decoder_weights": "dec_r41.pth"}, "imp", "trainable"),          # IMP trains the whole network
    ({"decoder_weights": "dec_r41.pth"}, "iccp", "trainable"),         # so does channel pruning
    ({"decoder": "frozen"}, "imp", "frozen"),                          # as asked
])
def test_decoder_auto_resolves_by_method_and_weights(model_keys, method, expected) -> None:
    cfg = build_config({"model": {"name": "lst", **model_keys}, "prune": {"method": method}})
    assert cfg.model.decoder == expected


def test_a_frozen_decoder_is_left_out_of_the_stage_and_gets_no_gradients() -> None:
    from distst.config import TrainConfig

    model = build(model_section(name="lst", width=WIDTH, decoder="frozen", encoder="trainable"))
    assert model.stages(TrainConfig())[0].groups == ("encoder", "transform")
    assert not any(p.requires_grad for p in model.decoder.parameters())
    terms = model.loss_terms(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), model.loss_network())
    (terms["content"] + terms["style"]).backward()
    assert all(p.grad is None for p in model.decoder.parameters())
    assert model.transform.unzip.weight.grad is not None and model.encoder.conv10.weight.grad is not None
    trainable = build(model_section(name="lst", width=WIDTH, decoder="trainable"))
    assert trainable.stages(TrainConfig())[0].groups == ("encoder", "transform", "decoder")
    assert all(p.requires_grad for p in trainable.decoder.parameters())


# --- channel couplings ----------------------------------------------------------------------------

def test_torch_pruning_sees_every_coupling_of_encoder_conv4_1() -> None:
    model = build(model_section(name="lst", width=WIDTH))
    graph = dependency_graph(model)
    names = {id(m): n for n, m in model.named_modules()}
    group = _group(graph, model.encoder.conv10, [0, 3])
    outs = {names[id(m)] for m, _ in _out_channel_targets(group)}
    assert outs == {"encoder.conv10", "transform.unzip"}  # unzip's output is added to the style mean
    ins = {names[id(dep.target.module)] for dep, _ in group if "in_channels" in dep.handler.__name__}
    assert ins == {"transform.compress", "transform.cnet.convs.0", "transform.snet.convs.0", "decoder.conv11"}


# --- the commands --------------------------------------------------------------------------------





def test_stylize_with_official_format_files_and_with_a_model_file(tmp_path: Path) -> None:
    reference = _random_model()
    names = {"vgg": reference.encoder, "decoder": reference.decoder, "transform": reference.transform}
    for flag, part in names.items():
        torch.save(part.state_dict(), tmp_path / f"{flag}.pth")
    content, style = write_image(tmp_path / "c.png", 44, 36, 1), write_image(tmp_path / "s.png", 40, 40, 2)
    common = ["stylize", "--model", "lst", "--width", str(WIDTH), "--content", str(content), "--style", str(style),
              "--content-size", "32", "--style-size", "32"]
    files = [arg for flag in names for arg in (f"--{flag}", str(tmp_path / f"{flag}.pth"))]
    assert main([*common, *files, "--out", str(tmp_path / "official.png")]) == 0
    with torch.no_grad():
        expected = reference(load_image(content, 32, 8, 32)[None], load_image(style, 32, 8, 32)[None])[0]
    written = read_image(tmp_path / "official.png")
    assert written.shape == (3, 32, 32)  # 44x36 -> 39x32, cropped to multiples of 8
    assert torch.allclose(written, expected.clamp(0, 1), atol=1 / 255 + 1e-4)
    model_file = save_model(reference, tmp_path / "lst.pt")
    assert main(["stylize", "--checkpoint", str(model_file), "--content", str(content), "--style", str(style),
                 "--content-size", "32", "--style-size", "32", "--out", str(tmp_path / "file.png")]) == 0
    assert torch.equal(read_image(tmp_path / "file.png"), written)


@pytest.mark.slow
def test_onnx_export_equals_torch_and_the_cached_pair_is_the_style_side(tmp_path: Path) -> None:
    from distst.export import export_model
    from distst.export.runtime import OnnxStylizer

    model_file = save_model(_random_model(), tmp_path / "lst.pt")
    manifest = export_model(model_file, tmp_path / "onnx")
    assert manifest["style_cache"]["names"] == ["style_matrix", "style_mean"]
    model, _ = load_model(model_file)
    model.eval()
    runner = OnnxStylizer(tmp_path / "onnx")
    for (ch, cw), (sh, sw) in (((64, 48), (48, 80)), ((72, 104), (56, 40))):
        content, style = torch.rand(1, 3, ch, cw), torch.rand(1, 3, sh, sw)
        with torch.no_grad():
            expected = model(content, style)
            matrix, mean = model.transform.style_side(model.encoder(style)[-1])
        whole = runner.forward(content, style)
        assert whole.shape == expected.shape and float((whole - expected).abs().max()) < 1e-4
        cached = runner.style_inputs(style)
        assert cached["style_matrix"].shape == (1, 1, 32, 32) and cached["style_mean"].shape == (1, 64, 1, 1)
        assert np.allclose(cached["style_matrix"][:, 0], matrix.numpy(), atol=1e-4)
        assert np.allclose(cached["style_mean"], mean.numpy(), atol=1e-5)
        pair = runner.stylize_cached(content, cached)
        assert float((pair - whole).abs().max()) < 1e-6 and float((pair - expected).abs().max()) < 1e-4


def test_distst_imp_runs_the_local_job_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    tiny = {"model.width": WIDTH, "data.crop": 32, "data.batch_size": 2, "data.workers": 0, "data.eval_pairs": 2,
            "train.steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2, "prune.rounds": 1,
            "prune.rewind_step": 1, "tracking.backend": "none", "run.out_dir": str(out)}
    job = REPO / "jobs" / "local" / "imp_lst.yaml"
    assert main(["imp", str(job), *(f"{k}={v}" for k, v in tiny.items())]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "lst" and summary["encoder"] == "trainable"
    assert [row["level"] for row in summary["levels"]] == [0, 1]
    assert summary["levels"][1]["sparsity"] == pytest.approx(0.2, abs=0.01)
    assert all(row["total_error"] > 0 for row in summary["levels"])
    masks = torch.load(out / "level_1" / "mask.pt", weights_only=True)
    # encoder, transform (CNNs, fc, compress, unzip) and decoder in the one global ranking
    assert {"encoder.conv10", "transform.cnet.fc", "transform.unzip", "decoder.conv19"} <= set(masks)
    # the whole network trained: encoder, transform and decoder moved from their rewind point (step 1)
    dense, _ = load_model(out / "level_0")
    rewind = torch.load(out / "level_0" / "rewind.pt", weights_only=True)
    assert dense.cfg.decoder == "trainable"
    for key in ("encoder.conv10.weight", "transform.cnet.fc.weight", "decoder.conv11.weight"):
        assert not torch.equal(dense.state_dict()[key], rewind[key]), key
