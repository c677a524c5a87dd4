"""AdaAttN: the reference layout (its three official files load strictly), parameter counts, the forward and the
losses against a plain re-statement of the reference code, its seeded sampling (the reference's subset, the
global RNG untouched), plans, alpha, recorded features, ONNX, and `distst stylize` / `distst imp` end to end."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import read_image, write_image

from distst import registry
from distst.cli import main
from distst.config import model_section
from distst.errors import ConfigError
from distst.images import load_image
from distst.models import PlanError, WeightsError, build, param_counts
from distst.models import adaattn as adaattn_module
from distst.models.adaattn import (
    REFERENCE_SEED,
    AdaAttN,
    AdaAttNDecoder,
    attention_statistics,
    sampled_positions,
)
from distst.models.io import save_model
from distst.models.vgg import vgg_normalised_layers

WIDTH = 0.125

# --- the official files' layouts, from the reference code (key -> shape) ------------------------------

def _attention_layout(prefix: str, key: int, channels: int) -> dict[str, tuple[int, ...]]:
    """``networks.AdaAttN(in_planes=channels, key_planes=key)``: f, g key -> key; h channels -> channels."""
    return {f"{prefix}f.weight": (key, key, 1, 1), f"{prefix}f.bias": (key,),
            f"{prefix}g.weight": (key, key, 1, 1), f"{prefix}g.bias": (key,),
            f"{prefix}h.weight": (channels, channels, 1, 1), f"{prefix}h.bias": (channels,)}


# latest_net_transformer.pth: Transformer(in_planes=512, key_planes=512+256+128+64, shallow_layer=True).
REFERENCE_TRANSFORMER = {
    **_attention_layout("attn_adain_4_1.", 960, 512),
    **_attention_layout("attn_adain_5_1.", 960 + 512, 512),
    "merge_conv.weight": (512, 512, 3, 3), "merge_conv.bias": (512,),
}
# latest_net_adaattn_3.pth: AdaAttN(in_planes=256, key_planes=256+128+64, max_sample=64*64).
REFERENCE_ADAATTN_3 = _attention_layout("", 448, 256)
# latest_net_decoder.pth: Decoder(skip_connection_3=True).
REFERENCE_DECODER = {
    "decoder_layer_1.1.weight": (256, 512, 3, 3), "decoder_layer_1.1.bias": (256,),
    "decoder_layer_2.1.weight": (256, 512, 3, 3), "decoder_layer_2.1.bias": (256,),
    "decoder_layer_2.4.weight": (256, 256, 3, 3), "decoder_layer_2.4.bias": (256,),
    "decoder_layer_2.7.weight": (256, 256, 3, 3), "decoder_layer_2.7.bias": (256,),
    "decoder_layer_2.10.weight": (128, 256, 3, 3), "decoder_layer_2.10.bias": (128,),
    "decoder_layer_2.14.weight": (128, 128, 3, 3), "decoder_layer_2.14.bias": (128,),
    "decoder_layer_2.17.weight": (64, 128, 3, 3), "decoder_layer_2.17.bias": (64,),
    "decoder_layer_2.21.weight": (64, 64, 3, 3), "decoder_layer_2.21.bias": (64,),
    "decoder_layer_2.24.weight": (3, 64, 3, 3), "decoder_layer_2.24.bias": (3,),
}


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def random_state(layout: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=generator) * 0.01 for k, shape in layout.items()}


@pytest.fixture(scope="module")
def reference_width_model():
    """The model at width 1.0, built once, only to count and to read layouts (never run)."""
    return build(model_section(name="adaattn"))


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build(model_section(name="adaattn", width=WIDTH)).eval()
    with torch.no_grad():
        # He-scaled weights (PyTorch's default init shrinks the signal to a near-constant image) and non-zero
        # biases everywhere, so that a weight or bias read in the wrong place shows in the output
        for module in (*model.transform.modules(), *model.decoder.modules()):
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(-0.1, 0.1)
    return model


# --- layout and counts -----------------------------------------------------------------------------

def test_parameter_counts_per_part_are_the_references(reference_width_model) -> None:
    model = reference_width_model
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.transform.transformer) == 9_066_752
    assert count(model.transform.adaattn_3) == 468_096
    assert count(model.decoder) == 4_095_043
    assert param_counts(model) == {"encoder": 12_944_972, "transform": 9_534_848, "decoder": 4_095_043,
                                   "total": 12_944_972 + 9_534_848 + 4_095_043}
    # the layouts written out above count the same
    assert sum(math.prod(s) for s in REFERENCE_TRANSFORMER.values()) == 9_066_752
    assert sum(math.prod(s) for s in REFERENCE_ADAATTN_3.values()) == 468_096
    assert sum(math.prod(s) for s in REFERENCE_DECODER.values()) == 4_095_043


def test_layouts_are_the_references(reference_width_model) -> None:
    model = reference_width_model
    assert shapes(model.transform.transformer) == REFERENCE_TRANSFORMER
    assert shapes(model.transform.adaattn_3) == REFERENCE_ADAATTN_3
    assert shapes(model.decoder) == REFERENCE_DECODER
    # the encoder: the reference vgg_normalised's first 44 modules (to relu5_1)
    full = shapes(torch.nn.Sequential(*vgg_normalised_layers(1.0)))
    assert shapes(model.encoder) == {k: v for k, v in full.items() if int(k.split(".")[0]) < 44}
    # the decoder's skip: its first decoder_layer_2 conv reads conv3_4's 256 channels and relu3_1's 256
    assert model.decoder.conv_layers()["conv3_3"].in_channels == 256 + 256
    assert registry.model_record("adaattn").weight_keys == ("vgg_weights", "decoder_weights", "transform_weights",
                                                            "adaattn3_weights")


def test_official_files_load_strictly_into_their_parts(tmp_path: Path) -> None:
    files = {"transform_weights": REFERENCE_TRANSFORMER, "adaattn3_weights": REFERENCE_ADAATTN_3,
             "decoder_weights": REFERENCE_DECODER}
    names = {"transform_weights": "latest_net_transformer.pth", "adaattn3_weights": "latest_net_adaattn_3.pth",
             "decoder_weights": "latest_net_decoder.pth"}
    states = {}
    for seed, (key, layout) in enumerate(files.items()):
        states[key] = random_state(layout, seed)
        torch.save(states[key], tmp_path / names[key])
    model = build(model_section(name="adaattn", **{k: str(tmp_path / names[k]) for k in files}))
    parts = {"transform_weights": model.transform.transformer, "adaattn3_weights": model.transform.adaattn_3,
             "decoder_weights": model.decoder}
    for key, part in parts.items():
        loaded = part.state_dict()
        assert set(loaded) == set(states[key]) and all(torch.equal(loaded[k], states[key][k]) for k in loaded), key
    # a model file never stores the paths
    saved = torch.load(save_model(model, tmp_path / "m.pt"), weights_only=False)
    assert not any(saved["model"].get(key) for key in files)


@pytest.mark.parametrize(("key", "change", "message"), [
    ("transform_weights", lambda s: s.pop("merge_conv.bias"), r"missing key 'merge_conv.bias'"),
    # a file from the configuration without shallow_layer: relu5_1's keys have only relu5_1's channels
    ("transform_weights", lambda s: s.update({"attn_adain_5_1.f.weight": torch.zeros(64, 64, 1, 1)}),
     r"shape of 'attn_adain_5_1.f.weight': file has \(64, 64, 1, 1\), model expects \(184, 184, 1, 1\)"),
    ("adaattn3_weights", lambda s: s.update({"module.h.weight": s.pop("h.weight")}), r"missing key 'h.weight'"),
    ("decoder_weights", lambda s: s.update({"decoder_layer_2.1.weight": torch.zeros(32, 32, 3, 3)}),
     r"shape of 'decoder_layer_2.1.weight': file has \(32, 32, 3, 3\), model expects \(32, 64, 3, 3\)"),
])
def test_a_wrong_file_is_refused_naming_the_key(tmp_path: Path, key: str, change: Callable, message: str) -> None:
    model = tiny_model()
    part = {"transform_weights": model.transform.transformer, "adaattn3_weights": model.transform.adaattn_3,
            "decoder_weights": model.decoder}[key]
    state = dict(part.state_dict())
    change(state)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=message):
        build(model_section(name="adaattn", width=WIDTH, **{key: str(tmp_path / "bad.pth")}))


def test_the_transformer_file_is_refused_as_the_relu3_1_module(tmp_path: Path) -> None:
    model = tiny_model()
    torch.save(model.transform.transformer.state_dict(), tmp_path / "transformer.pth")
    with pytest.raises(WeightsError, match=r"transformer.pth does not fit AdaAttN: missing key 'f.weight'"):
        build(model_section(name="adaattn", width=WIDTH, adaattn3_weights=str(tmp_path / "transformer.pth")))


# --- the reference code, re-stated plainly (models/networks.py, models/adaattn_model.py) -----------------

def ref_calc_mean_std(feat: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    n, c = feat.size()[:2]
    feat_var = feat.view(n, c, -1).var(dim=2) + eps
    return feat.view(n, c, -1).mean(dim=2).view(n, c, 1, 1), feat_var.sqrt().view(n, c, 1, 1)


def ref_mvn(feat: torch.Tensor) -> torch.Tensor:
    mean, std = ref_calc_mean_std(feat)
    return (feat - mean.expand(feat.size())) / std.expand(feat.size())


# The reference image_encoder's first 44 modules: C1 = the 1x1 conv, P = reflection pad, C = 3x3 conv, R = ReLU,
# M = ceil-mode max pool; sliced [:4], [4:11], [11:18], [18:31], [31:44] (relu1_1 ... relu5_1).
REF_VGG = "C P C R P C R M P C R P C R M P C R P C R P C R P C R M P C R P C R P C R P C R M P C R".split()
REF_SLICES = ((0, 4), (4, 11), (11, 18), (18, 31), (31, 44))


def ref_encode(vgg: dict[str, torch.Tensor], image: torch.Tensor) -> list[torch.Tensor]:
    results, x = [], image
    for start, end in REF_SLICES:
        for i in range(start, end):
            kind = REF_VGG[i]
            if kind == "C":
                x = F.conv2d(x, vgg[f"{i}.weight"], vgg[f"{i}.bias"])
            elif kind == "P":
                x = F.pad(x, (1, 1, 1, 1), mode="reflect")
            elif kind == "R":
                x = F.relu(x)
            else:
                x = F.max_pool2d(x, 2, 2, 0, ceil_mode=True)
        results.append(x)
    return results


def ref_get_key(feats: list[torch.Tensor], last_layer_idx: int) -> torch.Tensor:
    results = []
    _, _, h, w = feats[last_layer_idx].shape
    for i in range(last_layer_idx):
        results.append(ref_mvn(F.interpolate(feats[i], (h, w))))
    results.append(ref_mvn(feats[last_layer_idx]))
    return torch.cat(results, dim=1)


def ref_attention(content_key: torch.Tensor, style_key: torch.Tensor, style_value: torch.Tensor, max_sample: int,
                  seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention-weighted mean and std, as AdaAttN.forward and compute_style_loss write them (global RNG)."""
    b, _, h_g, w_g = style_key.size()
    g = style_key.view(b, -1, w_g * h_g)
    if w_g * h_g > max_sample:
        if seed is not None:
            torch.manual_seed(seed)
        index = torch.randperm(w_g * h_g)[:max_sample]
        g = g[:, :, index]
        style_flat = style_value.view(b, -1, w_g * h_g)[:, :, index].transpose(1, 2)
    else:
        style_flat = style_value.view(b, -1, w_g * h_g).transpose(1, 2)
    b, _, h, w = content_key.size()
    f = content_key.view(b, -1, w * h).permute(0, 2, 1)
    s = torch.softmax(torch.bmm(f, g), dim=-1)
    mean = torch.bmm(s, style_flat)
    std = torch.sqrt(torch.relu(torch.bmm(s, style_flat ** 2) - mean ** 2))
    return (mean.view(b, h, w, -1).permute(0, 3, 1, 2), std.view(b, h, w, -1).permute(0, 3, 1, 2))


def ref_adaattn(state: dict[str, torch.Tensor], prefix: str, content, style, content_key, style_key,
                max_sample: int, seed: int | None) -> torch.Tensor:
    conv = lambda name, x: F.conv2d(x, state[f"{prefix}{name}.weight"], state[f"{prefix}{name}.bias"])  # noqa: E731
    mean, std = ref_attention(conv("f", content_key), conv("g", style_key), conv("h", style), max_sample, seed)
    return std * ref_mvn(content) + mean


def ref_decoder(state: dict[str, torch.Tensor], cs: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    conv = lambda i, x: F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), state[f"{i}.weight"], state[f"{i}.bias"])  # noqa: E731
    up = lambda x: F.interpolate(x, scale_factor=2, mode="nearest")  # noqa: E731
    x = up(F.relu(conv("decoder_layer_1.1", cs)))
    x = torch.cat((x, skip), dim=1)
    for i in (1, 4, 7, 10):
        x = F.relu(conv(f"decoder_layer_2.{i}", x))
    x = up(x)
    for i in (14, 17):
        x = F.relu(conv(f"decoder_layer_2.{i}", x))
    x = up(x)
    x = F.relu(conv("decoder_layer_2.21", x))
    return conv("decoder_layer_2.24", x)


def ref_forward(model, content: torch.Tensor, style: torch.Tensor, seed: int, max_samples: tuple[int, int]):
    """AdaAttNModel.forward (shallow_layer, skip_connection_3) with the model's tensors as plain state dicts."""
    vgg = {k: v.detach() for k, v in model.encoder.state_dict().items()}
    transformer = {k: v.detach() for k, v in model.transform.transformer.state_dict().items()}
    adaattn_3 = {k: v.detach() for k, v in model.transform.adaattn_3.state_dict().items()}
    decoder = {k: v.detach() for k, v in model.decoder.state_dict().items()}
    c_feats, s_feats = ref_encode(vgg, content), ref_encode(vgg, style)
    skip_sample, main_sample = max_samples
    c_adain_feat_3 = ref_adaattn(adaattn_3, "", c_feats[2], s_feats[2], ref_get_key(c_feats, 2),
                                 ref_get_key(s_feats, 2), skip_sample, seed)
    branch4 = ref_adaattn(transformer, "attn_adain_4_1.", c_feats[3], s_feats[3], ref_get_key(c_feats, 3),
                          ref_get_key(s_feats, 3), main_sample, seed)
    branch5 = ref_adaattn(transformer, "attn_adain_5_1.", c_feats[4], s_feats[4], ref_get_key(c_feats, 4),
                          ref_get_key(s_feats, 4), main_sample, seed)
    merged = branch4 + F.interpolate(branch5, scale_factor=2, mode="nearest")
    cs = F.conv2d(F.pad(merged, (1, 1, 1, 1), mode="reflect"), transformer["merge_conv.weight"],
                  transformer["merge_conv.bias"])
    return ref_decoder(decoder, cs, c_adain_feat_3)


def ref_losses(loss_vgg: dict[str, torch.Tensor], output, content, style, seed: int, max_sample: int):
    """compute_content_loss and compute_style_loss (unweighted), with a frozen VGG's state."""
    c_feats, s_feats, stylized_feats = (ref_encode(loss_vgg, x) for x in (content, style, output))
    mse = F.mse_loss
    loss_content = loss_global = loss_local = 0.0
    for i in range(1, 5):
        loss_content = loss_content + mse(ref_mvn(stylized_feats[i]), ref_mvn(c_feats[i]))
        s_mean, s_std = ref_calc_mean_std(s_feats[i])
        o_mean, o_std = ref_calc_mean_std(stylized_feats[i])
        loss_global = loss_global + mse(o_mean, s_mean) + mse(o_std, s_std)
        mean, std = ref_attention(ref_get_key(c_feats, i), ref_get_key(s_feats, i), s_feats[i], max_sample, seed)
        loss_local = loss_local + mse(stylized_feats[i], std * ref_mvn(c_feats[i]) + mean)
    return {"content": loss_content, "style": loss_global, "local": loss_local}


def pair(content_size=(64, 48), style_size=(48, 64), n: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, *content_size, generator=g), torch.rand(n, 3, *style_size, generator=g)


def set_max_samples(model, skip: int, main: int) -> None:
    model.transform.adaattn_3.max_sample = skip
    model.transform.transformer.attn_adain_4_1.max_sample = main
    model.transform.transformer.attn_adain_5_1.max_sample = main


# --- the forward against the reference -----------------------------------------------------------------

def test_forward_equals_the_reference_restated() -> None:
    model = tiny_model()
    content, style = pair()
    with torch.no_grad(), torch.random.fork_rng():
        out = model(content, style)
        # at these sizes no module samples (relu3_1 of the style: 12 x 16 positions, under 64 x 64)
        expected = ref_forward(model, content, style, REFERENCE_SEED, (64 * 64, 256 * 256))
    assert out.shape == expected.shape == content.shape
    assert float(expected.std(dim=(2, 3)).min()) > 1e-2  # a real image, not a constant
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-4)


def test_forward_with_sampled_style_positions_equals_the_reference_and_leaves_the_global_rng_alone() -> None:
    model = tiny_model()
    set_max_samples(model, skip=50, main=7)  # relu3_1: 192 style positions, relu4_1: 48, relu5_1: 12: all sampled
    content, style = pair()
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    with torch.no_grad():
        out = model(content, style)
        assert torch.equal(torch.random.get_rng_state(), state)  # the forward drew nothing from the global RNG
        with torch.random.fork_rng():
            expected = ref_forward(model, content, style, REFERENCE_SEED, (50, 7))
            unsampled = ref_forward(model, content, style, REFERENCE_SEED, (10**6, 10**6))
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out, unsampled, atol=1e-3)  # the sampling changed something


def test_the_sampled_subset_is_the_references_draw() -> None:
    for positions, keep, seed in ((4096 * 4, 4096, REFERENCE_SEED), (300, 17, 42), (100, 99, 0)):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            reference = torch.randperm(positions)[:keep]
        state = torch.random.get_rng_state()
        ours = sampled_positions(positions, keep, seed, torch.device("cpu"))
        assert torch.equal(torch.random.get_rng_state(), state)
        assert ours is not None and torch.equal(ours, reference)
    assert sampled_positions(4096, 4096, 1, torch.device("cpu")) is None  # not more than max_sample: all kept


def test_module_with_subsampling_equals_the_reference_module() -> None:
    torch.manual_seed(3)
    module = AdaAttN(channels=5, key_channels=7, max_sample=9, projected=4)  # projected width unlike the key's
    content, style = torch.randn(2, 5, 4, 3), torch.randn(2, 5, 3, 5)
    content_key, style_key = torch.randn(2, 7, 4, 3), torch.randn(2, 7, 3, 5)
    state = {k: v.detach() for k, v in module.state_dict().items()}
    with torch.random.fork_rng():
        expected = ref_adaattn(state, "", content, style, content_key, style_key, 9, 77)
    assert torch.allclose(module(content, style, content_key, style_key, seed=77), expected, atol=1e-5)


def test_attention_statistics_closed_forms() -> None:
    values = torch.tensor([[1.0, 3.0, 5.0, 7.0], [2.0, 2.0, 2.0, 6.0]]).view(1, 2, 2, 2)
    # zero queries: uniform attention, so every position gets the style's mean and population std
    mean, std = attention_statistics(torch.zeros(1, 3, 1, 2), torch.randn(1, 3, 2, 2), values, 100, 0)
    assert torch.allclose(mean, torch.tensor([4.0, 3.0]).view(1, 2, 1, 1).expand(1, 2, 1, 2))
    assert torch.allclose(std, torch.tensor([math.sqrt(5.0), math.sqrt(3.0)]).view(1, 2, 1, 1).expand(1, 2, 1, 2),
                          atol=1e-5)
    # one key far closer to the query than the others: that position's value, with no spread
    key = torch.zeros(1, 1, 2, 2)
    key[0, 0, 1, 0] = 1.0
    mean, std = attention_statistics(torch.full((1, 1, 1, 1), 100.0), key, values, 100, 0)
    assert torch.allclose(mean.flatten(), torch.tensor([5.0, 2.0])) and float(std.max()) < 1e-3


def test_recorded_transform_is_the_transformers_tensor_and_the_skip_is_recorded_too() -> None:
    model = tiny_model()
    content, style = pair(n=1)
    model.features.want(["transform", "transform/relu3_1", "output"], model)
    with torch.no_grad():
        out = model(content, style)
        main_feat, skip = model.transform(model.encoder(content), model.encoder(style))
    store = model.features.take()
    assert torch.equal(store["transform"][0], main_feat) and torch.equal(store["transform/relu3_1"][0], skip)
    assert torch.equal(store["output"][0], out)
    assert main_feat.shape[1] == model.plan["encoder"]["conv4_1"] and skip.shape[1] == model.plan["encoder"]["conv3_1"]


def test_alpha_blends_each_of_the_pair_with_the_contents_own_features() -> None:
    model = tiny_model()
    content, style = pair(n=1)
    with torch.no_grad():
        feats = model.encoder(content)
        main_feat, skip = model.transform(feats, model.encoder(style))
        assert torch.equal(model(content, style, alpha=0.0), model.decoder((feats[3], feats[2])))
        blended = model.decoder((0.25 * main_feat + 0.75 * feats[3], 0.25 * skip + 0.75 * feats[2]))
        assert torch.allclose(model(content, style, alpha=0.25), blended, atol=1e-6)


def test_sizes_must_be_multiples_of_16_and_at_least_32() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="multiples of 16.*40x40"):
        model(torch.rand(1, 3, 40, 40), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="at least 32x32, got 16x16"):
        model(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 32, 32))


# --- losses and errors -------------------------------------------------------------------------------

def test_loss_terms_equal_the_reference_losses_with_the_steps_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model().train()
    assert model.loss_weights() == {"content": 0.0, "style": 10.0, "local": 3.0}
    # small limits so that the forward and the local loss both sample (relu2_1..relu4_1 in the loss)
    monkeypatch.setattr(adaattn_module, "LOSS_MAX_SAMPLE", 40)
    set_max_samples(model, skip=50, main=7)
    loss_net = model.loss_network()
    content, style = pair()
    torch.manual_seed(11)
    seed = int(torch.randint(10_000_000, (1,))[0])  # the reference's optimize_parameters draw
    after_one_draw = torch.random.get_rng_state()
    torch.manual_seed(11)
    terms = model.loss_terms(content, style, loss_net)
    assert torch.equal(torch.random.get_rng_state(), after_one_draw)  # one draw, and no re-seeding
    vgg = {k: v.detach() for k, v in loss_net.state_dict().items()}
    with torch.no_grad(), torch.random.fork_rng():
        output = ref_forward(model, content, style, seed, (50, 7))
        expected = ref_losses(vgg, output, content, style, seed, 40)
        other_seed = ref_losses(vgg, output, content, style, seed + 1, 40)
    assert set(terms) == {"content", "style", "local"}
    for key, value in expected.items():
        assert torch.allclose(terms[key], value, rtol=1e-4, atol=1e-6), key
    assert not torch.allclose(terms["local"], other_seed["local"], rtol=1e-4)  # the seed matters to the loss
    custom = build(model_section(name="adaattn", width=WIDTH, content_weight=1.5, local_weight=0.5))
    assert custom.loss_weights() == {"content": 1.5, "style": 10.0, "local": 0.5}


def test_local_target_of_a_flat_style_is_the_styles_features() -> None:
    # A constant image has constant features at every tap (reflection padding keeps them flat): its keys are
    # zero, the attention is uniform, M is the style's features and S is zero, whatever the content.
    model = tiny_model()
    loss_net = model.loss_network()
    content = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        content_feats, style_feats = loss_net(content), loss_net(torch.full((1, 3, 64, 64), 0.3))
        for tap in (1, 2, 3, 4):
            flat = style_feats[tap]
            assert torch.allclose(flat, flat[..., :1, :1].expand_as(flat))
            mean, std = attention_statistics(adaattn_module.attention_key(content_feats, tap),
                                             adaattn_module.attention_key(style_feats, tap), flat, 4096, 0)
            scale = float(flat.abs().max())
            assert scale > 0.1 and torch.allclose(mean, flat, atol=1e-5 * scale), tap
            # S is sqrt(E[v^2] - M^2) of equal values: zero up to the square root of float rounding
            assert float(std.max()) < 1e-2 * scale, tap
            target = adaattn_module.local_target(content_feats, style_feats, tap, REFERENCE_SEED)
            assert torch.allclose(target, mean + std * adaattn_module.mean_variance_norm(content_feats[tap]))
            assert torch.allclose(target, flat, atol=1e-2 * scale), tap


def test_errors_are_the_losses_unweighted_l2_counterparts_per_pair() -> None:
    model = tiny_model()
    loss_net = model.loss_network()
    content, style = pair(n=3)
    state = torch.random.get_rng_state()
    errors = model.errors(content, style, loss_net)
    assert torch.equal(torch.random.get_rng_state(), state)
    vgg = {k: v.detach() for k, v in loss_net.state_dict().items()}
    with torch.no_grad(), torch.random.fork_rng():
        output = ref_forward(model, content, style, REFERENCE_SEED, (64 * 64, 256 * 256))
        c_feats, s_feats, o_feats = (ref_encode(vgg, x) for x in (content, style, output))
        norm = lambda x: x.flatten(1).norm(dim=1)  # noqa: E731
        content_error = style_err = local_error = torch.zeros(3)
        for i in range(1, 5):
            content_error = content_error + norm(ref_mvn(o_feats[i]) - ref_mvn(c_feats[i]))
            (om, os_), (sm, ss) = ref_calc_mean_std(o_feats[i]), ref_calc_mean_std(s_feats[i])
            style_err = style_err + norm(om - sm) + norm(os_ - ss)
            mean, std = ref_attention(ref_get_key(c_feats, i), ref_get_key(s_feats, i), s_feats[i], 64 * 64,
                                      REFERENCE_SEED)
            local_error = local_error + norm(o_feats[i] - (std * ref_mvn(c_feats[i]) + mean))
    assert set(errors) == {"content_error", "style_error", "local_error"}
    for key, value in (("content_error", content_error), ("style_error", style_err), ("local_error", local_error)):
        assert errors[key].shape == (3,) and torch.allclose(errors[key].detach(), value, rtol=1e-4), key


# --- plans -------------------------------------------------------------------------------------------

def test_plans_where_the_added_branches_differ_are_refused() -> None:
    with pytest.raises((PlanError, ConfigError), match=r"model.plan.encoder.conv5_1=30 must equal encoder.conv4_1=64: AdaAttN adds"):
        build(model_section(name="adaattn", width=WIDTH, plan={"encoder": {"conv5_1": 30}}))


def test_a_narrower_plan_builds_trains_and_runs() -> None:
    plan = {"encoder": {"conv1_1": 5, "conv2_1": 9, "conv3_1": 20, "conv4_1": 40, "conv5_1": 40},
            "transform": {"attn_adain_4_1.key": 6, "attn_adain_5_1.key": 11, "adaattn_3.key": 3},
            "decoder": {"conv3_4": 7, "conv3_3": 13}}
    model = build(model_section(name="adaattn", width=WIDTH, plan=plan))
    transformer, skip = model.transform.transformer, model.transform.adaattn_3
    assert (transformer.attn_adain_4_1.f.in_channels, transformer.attn_adain_4_1.f.out_channels) == (5 + 9 + 20 + 40, 6)
    assert (transformer.attn_adain_5_1.g.in_channels, transformer.attn_adain_5_1.g.out_channels) == (114, 11)
    assert (skip.f.in_channels, skip.f.out_channels, skip.h.out_channels) == (34, 3, 20)
    assert transformer.merge_conv.out_channels == 40
    assert isinstance(model.decoder, AdaAttNDecoder)
    assert model.decoder.conv_layers()["conv3_3"].in_channels == 7 + 20
    content, style = torch.rand(1, 3, 32, 48), torch.rand(1, 3, 48, 32)
    assert model(content, style).shape == (1, 3, 32, 48)
    terms = model.loss_terms(content, style, model.loss_network())
    sum(model.loss_weights()[k] * v for k, v in terms.items()).backward()
    assert skip.f.weight.grad is not None and transformer.merge_conv.weight.grad is not None


def test_channel_layers_are_the_encoders_and_the_mirrored_decoders() -> None:
    model = tiny_model()
    layers = model.channel_layers()
    assert list(layers["encoder"]) == list(model.plan["encoder"]) and layers["encoder"]["conv5_1"].out_channels == 64
    assert list(layers["decoder"]) == list(model.plan["decoder"])
    assert type(model).supports_channel_pruning()


# --- export --------------------------------------------------------------------------------------------

# --- the commands --------------------------------------------------------------------------------------


def test_stylize_with_official_format_files_and_with_a_model_file(tmp_path: Path) -> None:
    reference = tiny_model()
    torch.save(torch.nn.Sequential(*vgg_normalised_layers(WIDTH)).state_dict(), tmp_path / "vgg.pth")
    torch.save(reference.decoder.state_dict(), tmp_path / "latest_net_decoder.pth")
    torch.save(reference.transform.transformer.state_dict(), tmp_path / "latest_net_transformer.pth")
    torch.save(reference.transform.adaattn_3.state_dict(), tmp_path / "latest_net_adaattn_3.pth")
    content, style = write_image(tmp_path / "c.png", 44, 36, 1), write_image(tmp_path / "s.png", 40, 40, 2)
    sizes = ["--content-size", "32", "--style-size", "32"]
    common = ["stylize", "--model", "adaattn", "--width", str(WIDTH), "--content", str(content), "--style", str(style)]
    # without the relu3_1 module's file the command refuses (that part would be random)
    files = ["--vgg", str(tmp_path / "vgg.pth"), "--decoder", str(tmp_path / "latest_net_decoder.pth"),
             "--transform", str(tmp_path / "latest_net_transformer.pth")]
    assert main([*common, *files, *sizes, "--out", str(tmp_path / "no.png")]) != 0
    out = tmp_path / "out.png"
    assert main([*common, *files, "--weights", f"adaattn3_weights={tmp_path / 'latest_net_adaattn_3.pth'}",
                 *sizes, "--out", str(out)]) == 0
    model = build(model_section(name="adaattn", width=WIDTH, vgg_weights=str(tmp_path / "vgg.pth"),
                                decoder_weights=str(tmp_path / "latest_net_decoder.pth"),
                                transform_weights=str(tmp_path / "latest_net_transformer.pth"),
                                adaattn3_weights=str(tmp_path / "latest_net_adaattn_3.pth"))).eval()
    with torch.no_grad():
        expected = model(load_image(content, 32, 16, 32)[None], load_image(style, 32, 16, 32)[None])[0]
    written = read_image(out)
    assert written.shape == (3, 32, 32)  # 44x36 -> 39x32, cropped to multiples of 16
    assert torch.allclose(written, expected.clamp(0, 1), atol=1 / 255 + 1e-4)
    # the same weights through a distst model file
    model_file = save_model(model, tmp_path / "model.pt")
    again = tmp_path / "again.png"
    assert main(["stylize", "--checkpoint", str(model_file), "--content", str(content), "--style", str(style), *sizes,
                 "--out", str(again)]) == 0
    assert torch.equal(read_image(again), written)
