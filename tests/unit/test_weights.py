"""Official-format weight files load strictly, round-trip exactly, and mismatches are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from distst.config import model_section
from distst.models import WeightsError, build
from distst.models.io import load_model, save_model
from distst.models.vgg import convert_torchvision_vgg19, vgg_normalised_layers


def write_reference_files(tmp: Path, width: float) -> dict[str, Path]:
    """Random weights in the official layouts: a full 53-module VGG, a decoder, a SANet transform."""
    torch.manual_seed(1)
    vgg = torch.nn.Sequential(*vgg_normalised_layers(width))
    sanet = build(model_section(name="sanet", width=width))
    files = {"vgg": tmp / "vgg_normalised.pth", "decoder": tmp / "decoder.pth", "transform": tmp / "transformer.pth"}
    torch.save(vgg.state_dict(), files["vgg"])
    torch.save(sanet.decoder.state_dict(), files["decoder"])
    torch.save(sanet.transform.state_dict(), files["transform"])
    return files


@pytest.mark.parametrize("name", ["adain", "sanet"])
def test_official_files_load_and_give_identical_output(tmp_path: Path, name: str) -> None:
    files = write_reference_files(tmp_path, 0.125)
    cfg = model_section(name=name, width=0.125, vgg_weights=str(files["vgg"]), decoder_weights=str(files["decoder"]),
                      transform_weights=str(files["transform"]) if name == "sanet" else None)
    model = build(cfg).eval()
    reference = torch.nn.Sequential(*vgg_normalised_layers(0.125))
    reference.load_state_dict(torch.load(files["vgg"], weights_only=True))
    for index, layer in enumerate(model.encoder):  # the encoder is exactly the reference's prefix
        for key, value in layer.state_dict().items():
            assert torch.equal(value, reference[index].state_dict()[key])
    content, style = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        first = model(content, style)
        # save in the official format, load into a fresh model: identical output
        torch.save(model.decoder.state_dict(), tmp_path / "decoder_again.pth")
        again = build(cfg.model_copy(update={"decoder_weights": str(tmp_path / "decoder_again.pth")})).eval()
        assert torch.equal(first, again(content, style))


def test_model_file_round_trip(tmp_path: Path) -> None:
    cfg = model_section(name="sanet", width=0.125, encoder="trainable")
    model = build(cfg).eval()
    save_model(model, tmp_path / "model.pt")
    loaded, loaded_cfg = load_model(tmp_path)
    assert loaded_cfg.model_copy(update={"plan": None}) == cfg and loaded.plan == model.plan
    content = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(content, content), loaded.eval()(content, content))


def test_mismatching_file_names_the_keys(tmp_path: Path) -> None:
    files = write_reference_files(tmp_path, 0.125)
    with pytest.raises(WeightsError, match=r"shape of '1.weight'.*\(32, 64, 3, 3\).*\(64, 128, 3, 3\)"):
        build(model_section(name="adain", width=0.25, decoder_weights=str(files["decoder"])))
    state = torch.load(files["decoder"], weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    del state["28.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"missing key '28.bias'.*unexpected key 'extra.weight'"):
        build(model_section(name="adain", width=0.125, decoder_weights=str(tmp_path / "bad.pth")))


def test_missing_or_pickled_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist.*never downloads"):
        build(model_section(name="adain", vgg_weights=str(tmp_path / "nope.pth")))
    (tmp_path / "evil.pth").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="not a loadable weights file"):
        build(model_section(name="adain", width=0.125, decoder_weights=str(tmp_path / "evil.pth")))


def test_torchvision_vgg19_conversion(tmp_path: Path) -> None:
    torch.manual_seed(0)
    features = torchvision.models.vgg19(weights=None).features
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "tv.pth")
    out = convert_torchvision_vgg19(tmp_path / "tv.pth", tmp_path / "vgg_normalised.pth")
    model = build(model_section(name="adain", vgg_weights=str(out)))
    assert torch.equal(model.encoder[2].weight, features[0].weight)
    assert torch.equal(model.encoder[29].weight, features[19].weight)
    # the leading 1x1 conv applies torchvision's ImageNet normalisation to [0, 1] inputs
    x = torch.rand(1, 3, 4, 4)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(model.encoder[0](x), (x - mean) / std, atol=1e-6)
