"""``distst stylize`` end to end on tiny random-weight models and generated images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import write_image
from PIL import Image

from distst.cli import main
from distst.config import model_section
from distst.models import build
from distst.models.io import save_model
from distst.models.vgg import vgg_normalised_layers


@pytest.fixture()
def images(tmp_path: Path) -> dict[str, Path]:
    content_dir = tmp_path / "content"
    content_dir.mkdir()
    for i, (w, h) in enumerate([(48, 40), (48, 40), (40, 56), (48, 40), (36, 34)]):
        write_image(content_dir / f"c{i}.jpg", w, h, i)
    return {"dir": content_dir, "one": content_dir / "c2.jpg", "style": write_image(tmp_path / "s.png", 50, 60, 9)}


def test_stylize_with_reference_files(tmp_path: Path, images: dict[str, Path]) -> None:
    torch.save(torch.nn.Sequential(*vgg_normalised_layers(0.125)).state_dict(), tmp_path / "vgg.pth")
    torch.save(build(model_section(name="adain", width=0.125)).decoder.state_dict(), tmp_path / "dec.pth")
    out = tmp_path / "out.png"
    code = main(["stylize", "--content", str(images["one"]), "--style", str(images["style"]), "--width", "0.125",
                 "--vgg", str(tmp_path / "vgg.pth"), "--decoder", str(tmp_path / "dec.pth"),
                 "--content-size", "32", "--style-size", "32", "--out", str(out)])
    assert code == 0
    with Image.open(out) as img:
        # shorter side 40 -> 32, aspect kept (truncated, as torchvision.Resize): 40x56 -> 32x44
        assert img.size == (32, 44) and img.mode == "RGB"


def test_stylize_directory_with_checkpoint_and_sanet_multiples(tmp_path: Path, images: dict[str, Path]) -> None:
    cfg = model_section(name="sanet", width=0.125)
    save_model(build(cfg), tmp_path / "run" / "model.pt")
    out_dir = tmp_path / "styled"
    code = main(["stylize", "--content", str(images["dir"]), "--style", str(images["style"]),
                 "--checkpoint", str(tmp_path / "run"), "--content-size", "0", "--style-size", "32",
                 "--batch-size", "2", "--out", str(out_dir), "--alpha", "0.5"])
    assert code == 0
    written = sorted(p.name for p in out_dir.glob("*.png"))
    assert written == [f"c{i}_stylized_s.png" for i in range(5)]
    with Image.open(out_dir / "c0_stylized_s.png") as img:
        assert img.size == (48, 32)  # 48x40 center-cropped to multiples of 16 for SANet
    with Image.open(out_dir / "c4_stylized_s.png") as img:
        assert img.size == (32, 32)


def test_stylize_errors_are_one_line(tmp_path: Path, images: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    code = main(["stylize", "--content", str(images["one"]), "--style", str(images["style"]), "--out", "x.png"])
    assert code == 2 and "need --vgg and --decoder" in capsys.readouterr().err
    code = main(["stylize", "--content", str(tmp_path / "missing"), "--style", str(images["style"]),
                 "--checkpoint", str(tmp_path / "none.pt"), "--out", "x.png"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_models_command_json(capsys: pytest.CaptureFixture) -> None:
    import json

    assert main(["models", "--json", "--width", "0.25"]) == 0
    rows = {row["model"]: row for row in json.loads(capsys.readouterr().out)}
    assert {"adain", "sanet"} <= set(rows)  # and any model a test registered (the toy GAN)
    # closed form for the AdaIN decoder at 256x256, width 0.25: sum of Cin*Cout*9*Hout*Wout per conv
    plan = [(128, 64, 32), (64, 64, 64), (64, 64, 64), (64, 64, 64), (64, 32, 64), (32, 32, 128), (32, 16, 128),
            (16, 16, 256), (16, 3, 256)]
    assert rows["adain"]["macs_256"]["decoder"] == sum(ci * co * 9 * s * s for ci, co, s in plan)
    assert rows["sanet"]["macs_512"]["transform"] > 0 and rows["adain"]["macs_512"]["transform"] == 0
