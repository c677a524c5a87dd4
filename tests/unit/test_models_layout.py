"""The models match the reference layouts exactly, so official weight files load strictly."""

from __future__ import annotations

import pytest
import torch

from distst.config import model_section
from distst.models import create, param_counts
from distst.models.decoder import REFERENCE_WIDTHS as REFERENCE_DECODER_WIDTHS
from distst.models.decoder import Decoder
from distst.models.vgg import VGGEncoder, vgg_normalised_layers

# The reference vgg_normalised.pth (53-module nn.Sequential): index -> (out, in, kh, kw) of each conv.
REFERENCE_VGG_CONVS = {
    0: (3, 3, 1, 1), 2: (64, 3, 3, 3), 5: (64, 64, 3, 3), 9: (128, 64, 3, 3), 12: (128, 128, 3, 3),
    16: (256, 128, 3, 3), 19: (256, 256, 3, 3), 22: (256, 256, 3, 3), 25: (256, 256, 3, 3),
    29: (512, 256, 3, 3), 32: (512, 512, 3, 3), 35: (512, 512, 3, 3), 38: (512, 512, 3, 3),
    42: (512, 512, 3, 3), 45: (512, 512, 3, 3), 48: (512, 512, 3, 3), 51: (512, 512, 3, 3),
}
REFERENCE_VGG_POOLS = (7, 14, 27, 40)
# The reference decoder.pth: index -> (out, in, 3, 3).
REFERENCE_DECODER_CONVS = {
    1: (256, 512), 5: (256, 256), 8: (256, 256), 11: (256, 256), 14: (128, 256), 18: (128, 128),
    21: (64, 128), 25: (64, 64), 28: (3, 64),
}
REFERENCE_DECODER_UPSAMPLES = (3, 16, 23)


def expected_state(convs: dict[int, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    table = {}
    for index, shape in convs.items():
        table[f"{index}.weight"] = shape if len(shape) == 4 else (*shape, 3, 3)
        table[f"{index}.bias"] = (shape[0],)
    return table


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_vgg_full_layout_equals_reference() -> None:
    layers = vgg_normalised_layers(1.0)
    assert len(layers) == 53
    assert shapes(torch.nn.Sequential(*layers)) == expected_state(REFERENCE_VGG_CONVS)
    for index in REFERENCE_VGG_POOLS:
        pool = layers[index]
        assert isinstance(pool, torch.nn.MaxPool2d) and pool.ceil_mode and pool.kernel_size == (2, 2)
    for index in REFERENCE_VGG_CONVS:
        if index:
            assert isinstance(layers[index - 1], torch.nn.ReflectionPad2d)
            assert isinstance(layers[index + 1], torch.nn.ReLU)


@pytest.mark.parametrize(("depth", "length"), [("relu4_1", 31), ("relu5_1", 44)])
def test_encoder_is_a_prefix_of_the_reference(depth: str, length: int) -> None:
    encoder = VGGEncoder(depth)
    assert len(encoder) == length
    full = expected_state(REFERENCE_VGG_CONVS)
    assert shapes(encoder) == {k: v for k, v in full.items() if int(k.split(".")[0]) < length}


def test_decoder_layout_equals_reference() -> None:
    decoder = Decoder(512, REFERENCE_DECODER_WIDTHS)
    assert len(decoder) == 29
    assert shapes(decoder) == expected_state(REFERENCE_DECODER_CONVS)
    for index in REFERENCE_DECODER_UPSAMPLES:
        assert isinstance(decoder[index], torch.nn.Upsample) and decoder[index].scale_factor == 2
    assert not isinstance(decoder[-1], torch.nn.ReLU)


def test_parameter_counts_are_exact() -> None:
    adain = param_counts(create(model_section(name="adain")))
    assert adain["encoder"] == 3_505_740 and adain["decoder"] == 3_505_219 and adain["transform"] == 0
    sanet = create(model_section(name="sanet"))
    assert sum(p.numel() for p in sanet.transform.sanet4_1.parameters()) == 1_050_624
    assert param_counts(sanet)["transform"] == 4_461_056
    assert param_counts(sanet)["decoder"] == 3_505_219


def test_sanet_transform_keys_follow_reference() -> None:
    keys = set(create(model_section(name="sanet", width=0.0625)).transform.state_dict())
    for module in ("sanet4_1", "sanet5_1"):
        for conv in ("f", "g", "h", "out_conv"):
            assert {f"{module}.{conv}.weight", f"{module}.{conv}.bias"} <= keys
    assert {"merge_conv.weight", "merge_conv.bias"} <= keys and len(keys) == 18


def test_width_scales_hidden_channels_only() -> None:
    model = create(model_section(name="adain", width=0.25))
    assert model.encoder[0].weight.shape == (3, 3, 1, 1)
    assert model.encoder[2].weight.shape == (16, 3, 3, 3)
    assert model.encoder[29].weight.shape == (128, 64, 3, 3)
    assert model.decoder[1].weight.shape == (64, 128, 3, 3)
    assert model.decoder[28].weight.shape == (3, 16, 3, 3)


def test_groups_are_the_three_parts() -> None:
    model = create(model_section(name="sanet", width=0.0625))
    assert list(model.groups()) == ["encoder", "transform", "decoder"]
    assert model.groups()["transform"] is model.transform


def test_sanet_rejects_sizes_not_multiple_of_16() -> None:
    model = create(model_section(name="sanet", width=0.0625))
    image = torch.rand(1, 3, 100, 100)
    with pytest.raises(ValueError, match="multiples of 16.*100x100"):
        model(image, image)


def test_adain_accepts_any_size() -> None:
    model = create(model_section(name="adain", width=0.0625))
    out = model(torch.rand(1, 3, 40, 40), torch.rand(1, 3, 36, 52))
    assert out.shape == (1, 3, 40, 40)
