"""``distst stylize`` for every shipped model of the registry (a tiny random model through the CLI: an image of the
right size, or for a noise model its one-line answer), and a published CycleGAN generator (the reference's file
layout) used by stylize, export (ONNX) and training (``model.generator_*_weights``, the start of a fine-tune or
an IMP run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cyclegan_reference import ReferenceResnetGenerator, write_generator
from helpers import tiny_config, write_image
from PIL import Image

from distst import registry
from distst.cli import main

registry.load_builtins()
#: The shipped models (a model a test registers for itself is not one a user can be left without).
SHIPPED = sorted(name for name, record in registry.MODELS.items() if record.model_class.__module__.startswith("distst."))
NGF, WIDTH = 4, "0.0625"  # a published generator's layout (9 blocks) at ngf 4: distst's width 1/16


def sized_image(path: Path, model_class: type, seed: int) -> tuple[Path, tuple[int, int]]:
    """A non-square image whose sides the model takes as they are (multiples of its input multiple, at least its
    minimum): (path, (width, height))."""
    m = model_class.input_multiple
    side = -(-max(model_class.min_size, 32) // m) * m
    return write_image(path, side + m, side, seed), (side + m, side)


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("name", SHIPPED)
def test_every_model_stylizes_or_translates_or_says_where_to_go(tmp_path: Path, name: str,
                                                              capsys: pytest.CaptureFixture) -> None:
    record = registry.model_record(name)
    content, size = sized_image(tmp_path / "content.png", record.model_class, 1)
    style = ["--style", str(sized_image(tmp_path / "style.png", record.model_class, 2)[0]), "--style-size", "0"] \
        if record.inputs == "content_style" else []
    out = tmp_path / "out.png"
    argv = ["stylize", "--model", name, "--width", "0.125", "--allow-random", "--content", str(content),
            "--content-size", "0", *style, "--out", str(out)]
    if record.inputs == "noise":
        assert "generates images from noise" in one_line_error(argv, capsys)
        return
    assert main(argv) == 0
    with Image.open(out) as image:
        assert image.size == size and image.mode == "RGB"


def test_a_noise_model_gets_one_line_saying_where_to_go(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    """Whether or not a noise model ships yet: the command decides by the record's inputs alone."""
    record = registry.model_record("cyclegan")
    monkeypatch.setitem(registry.MODELS, "noise_toy", type(record)("noise_toy", record.section, record.model_class,
                                                                  inputs="noise"))
    err = one_line_error(["stylize", "--model", "noise_toy", "--content", "x.png", "--out", "y.png"], capsys)
    assert err.startswith("distst stylize: error: noise_toy generates images from noise, without a content image: "
                          "stylize does not apply; ")


def test_flags_a_model_does_not_take_are_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    content = write_image(tmp_path / "c.png", 36, 32, 1)
    base = ["stylize", "--content", str(content), "--out", str(tmp_path / "o.png"), "--allow-random"]
    for extra, needle in ((["--style", str(content)], "drop --style"), (["--alpha", "0.5"], "drop --alpha"),
                          (["--vgg", "v.pth", "--decoder", "d.pth"], "drop --vgg, --decoder"),
                          (["--weights", "vgg_weights=v.pth"], "cyclegan has no weight file 'vgg_weights'")):
        err = one_line_error([*base, "--model", "cyclegan", *extra], capsys)
        assert needle in err, err
    assert "generator_weights" in one_line_error([*base[:-1], "--model", "cyclegan"], capsys)  # no random default
    assert "--style is required: adain" in one_line_error([*base, "--model", "adain"], capsys)


@pytest.fixture()
def published(tmp_path: Path) -> tuple[Path, ReferenceResnetGenerator]:
    """A published-layout generator file (9 blocks, as every released CycleGAN model) and its network."""
    torch.manual_seed(0)
    reference = ReferenceResnetGenerator(NGF, 9)
    return write_generator(tmp_path / "latest_net_G.pth", reference), reference


def _pixels(tensor: torch.Tensor) -> np.ndarray:
    return (tensor.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy().astype(int)


def test_stylize_and_export_translate_with_a_published_generator_as_the_reference(
        tmp_path: Path, published: tuple[Path, ReferenceResnetGenerator], capsys: pytest.CaptureFixture) -> None:
    from distst.export.runtime import OnnxStylizer
    from distst.images import load_image

    path, reference = published
    (tmp_path / "photos").mkdir()
    content = write_image(tmp_path / "photos" / "p.png", 44, 36, 3)
    weights = ["--model", "cyclegan", "--width", WIDTH, "--weights", f"generator_weights={path}"]
    assert main(["stylize", *weights, "--content", str(content.parent), "--content-size", "0",
                 "--out", str(tmp_path / "out")]) == 0
    expected = reference.translate(load_image(content)[None])[0]
    with Image.open(tmp_path / "out" / "p_translated.png") as image:
        assert np.abs(np.asarray(image).astype(int) - _pixels(expected)).max() <= 1  # 8-bit rounding

    assert main(["export", *weights, "--out", str(tmp_path / "onnx")]) == 0
    runner = OnnxStylizer(tmp_path / "onnx")
    assert runner.manifest["inputs"] == "content" and set(runner.paths) == {"forward"}
    assert "generator_weights" not in runner.manifest["model"]  # where weights came from is not the export's
    for h, w in ((32, 48), (44, 36)):  # sizes other than the trace's example
        images = torch.rand(1, 3, h, w)
        assert float((runner.forward(images) - reference.translate(images)).abs().max()) < 1e-4
    assert main(["stylize", "--onnx", str(tmp_path / "onnx"), "--content", str(content), "--content-size", "0",
                 "--out", str(tmp_path / "onnx.png")]) == 0
    with Image.open(tmp_path / "onnx.png") as image:
        assert np.abs(np.asarray(image).astype(int) - _pixels(expected)).max() <= 1
    err = one_line_error(["export", "--model", "cyclegan", "--width", WIDTH, "--out", str(tmp_path / "x")], capsys)
    assert err.startswith("distst export: error: need --weights generator_weights=latest_net_G.pth or ")


def test_a_published_pair_is_where_training_starts(tmp_path: Path) -> None:
    from distst.models.io import load_model
    from distst.preflight import problems
    from distst.train import train
    from distst.train.loop import build_for_training

    torch.manual_seed(4)
    g_a, g_b = ReferenceResnetGenerator(NGF, 1), ReferenceResnetGenerator(NGF, 1)
    files = {"model__generator_ab_weights": str(write_generator(tmp_path / "latest_net_G_A.pth", g_a)),
             "model__generator_ba_weights": str(write_generator(tmp_path / "latest_net_G_B.pth", g_b))}
    settings = {"model__name": "cyclegan", "model__width": float(WIDTH), "model__blocks": 1, "model__pool_size": 2,
                "train__steps": 2, "train__lr": 1e-5, "train__checkpoint_every": 2, "train__eval_every": 2}
    cfg = tiny_config(tmp_path / "run", **settings, **files)
    model, _ = build_for_training(cfg)
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.translate(images, "ab"), g_a.translate(images), atol=1e-6)
        assert torch.allclose(model.translate(images, "ba"), g_b.translate(images), atol=1e-6)
    missing = tiny_config(tmp_path / "other", **settings, **{**files, "model__generator_ba_weights": "none.pth"})
    assert "model.generator_ba_weights: none.pth does not exist" in " ".join(problems(missing))

    train(cfg, tmp_path / "run")  # a fine-tune of the published pair: two steps at a small learning rate
    trained, section = load_model(tmp_path / "run")
    with torch.no_grad():
        moved = float((trained.translate(images, "ab") - g_a.translate(images)).abs().max())
    assert 0 < moved < 0.05 and section.generator_ab_weights is None  # started there, and trained
