"""``distst stylize`` with bad inputs: one line on stderr and exit code 2, or skipped and counted in a directory.

Runs the CLI in-process (``main``) on 1/8-width models and images of a few dozen pixels made here.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_image
from PIL import Image

from distst.cli import main
from distst.commands.stylize import MAX_SIZE
from distst.config import model_section
from distst.data.encode import Encoded, EncodeOptions, encode_item
from distst.data.sources import SourceItem
from distst.images import MAX_SIDE, load_image
from distst.models import build
from distst.models.io import save_model
from distst.models.vgg import vgg_normalised_layers

WIDTH = "0.125"




def write_truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Reference-layout files of 1/8-width models: vgg, AdaIN and SANet decoders, SANet transform, a model file."""
    folder = tmp_path_factory.mktemp("weights")
    torch.save(torch.nn.Sequential(*vgg_normalised_layers(0.125)).state_dict(), folder / "vgg.pth")
    adain = build(model_section(name="adain", width=0.125))
    sanet = build(model_section(name="sanet", width=0.125))
    torch.save(adain.decoder.state_dict(), folder / "adain_decoder.pth")
    torch.save(sanet.decoder.state_dict(), folder / "sanet_decoder.pth")
    torch.save(sanet.transform.state_dict(), folder / "sanet_transform.pth")
    save_model(adain, folder / "model.pt")
    return {"vgg": folder / "vgg.pth", "adain_decoder": folder / "adain_decoder.pth",
            "sanet_decoder": folder / "sanet_decoder.pth", "sanet_transform": folder / "sanet_transform.pth",
            "model": folder / "model.pt"}


@pytest.fixture()
def images(tmp_path: Path) -> dict[str, Path]:
    return {"content": write_image(tmp_path / "content.png", seed=1), "style": write_image(tmp_path / "style.png", seed=2)}


def stylize(*args: str, content: Path, style: Path, out: Path, weights: dict[str, Path] | None = None) -> list[str]:
    argv = ["stylize", "--content", str(content), "--style", str(style), "--out", str(out), "--width", WIDTH,
            "--content-size", "32", "--style-size", "32", *args]
    if weights is not None and "--checkpoint" not in args and "--model" not in args:
        argv += ["--vgg", str(weights["vgg"]), "--decoder", str(weights["adain_decoder"])]
    return argv


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run ``argv``; it must exit 2 with exactly one line on stderr (no traceback). Returns that line."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distst stylize: error: "), err
    return lines[0]


# --- arguments, refused before any model is built ----------------------------------------------------

@pytest.mark.parametrize(("args", "expected"), [
    (["--alpha", "-0.1"], "--alpha must be in [0, 1]"),
    (["--alpha", "1.5"], "--alpha must be in [0, 1]"),
    (["--content-size", "-8"], "--content-size must be in 0..8192"),
    (["--style-size", "-1"], "--style-size must be in 0..8192"),
    (["--content-size", "100000"], "--content-size must be in 0..8192"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--device", "nonsense"], "is not a torch device"),
])
def test_bad_numbers_and_devices_are_one_line(args: list[str], expected: str, tmp_path: Path,
                                              images: dict[str, Path], weights: dict[str, Path],
                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.png"
    line = one_line_error(capsys, stylize(*args, content=images["content"], style=images["style"], out=out,
                                          weights=weights))
    assert expected in line
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path: Path, images: dict[str, Path], weights: dict[str, Path],
                                       capsys: pytest.CaptureFixture) -> None:
    line = one_line_error(capsys, stylize("--device", "cuda", content=images["content"], style=images["style"],
                                          out=tmp_path / "out.png", weights=weights))
    assert "CUDA is not available" in line


def test_size_limit_is_the_image_limit() -> None:
    assert MAX_SIZE == MAX_SIDE  # the documented --content-size limit is the one load_image enforces


def test_unknown_model_lists_the_registered_ones(tmp_path: Path, images: dict[str, Path],
                                                 capsys: pytest.CaptureFixture) -> None:
    line = one_line_error(capsys, stylize("--model", "foo", "--allow-random", content=images["content"],
                                          style=images["style"], out=tmp_path / "out.png"))
    assert "unknown --model 'foo'; registered models: " in line and all(
        f"{name}," in line or line.endswith(name) for name in ("adain", "mccnet", "sanet"))


@pytest.mark.parametrize(("pair", "expected"), [
    ("transform_weights", "expected KEY=FILE"),
    ("adaattn3_weights=x.pth", "sanet has no weight file 'adaattn3_weights'; its keys: vgg_weights, decoder_weights"),
])
def test_bad_weights_options_are_one_line(pair: str, expected: str, tmp_path: Path, images: dict[str, Path],
                                          capsys: pytest.CaptureFixture) -> None:
    line = one_line_error(capsys, stylize("--model", "sanet", "--weights", pair, content=images["content"],
                                          style=images["style"], out=tmp_path / "out.png"))
    assert expected in line


def test_weights_option_sets_a_model_key(tmp_path: Path, images: dict[str, Path], weights: dict[str, Path]) -> None:
    argv = stylize("--model", "sanet", "--vgg", str(weights["vgg"]), "--decoder", str(weights["sanet_decoder"]),
                   "--weights", f"transform_weights={weights['sanet_transform']}", content=images["content"],
                   style=images["style"], out=tmp_path / "out.png")
    assert main(argv) == 0  # every part has its file: no --allow-random needed


# --- weights: every part needs them unless --allow-random --------------------------------------------

def test_sanet_without_transform_needs_allow_random(tmp_path: Path, images: dict[str, Path],
                                                    weights: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    argv = stylize("--model", "sanet", "--vgg", str(weights["vgg"]), "--decoder", str(weights["sanet_decoder"]),
                   content=images["content"], style=images["style"], out=tmp_path / "out.png")
    line = one_line_error(capsys, argv)
    assert "need --transform" in line and "--allow-random" in line
    assert main([*argv, "--allow-random"]) == 0
    assert (tmp_path / "out.png").is_file()


def test_sanet_with_every_file_runs(tmp_path: Path, images: dict[str, Path], weights: dict[str, Path]) -> None:
    argv = stylize("--model", "sanet", "--vgg", str(weights["vgg"]), "--decoder", str(weights["sanet_decoder"]),
                   "--transform", str(weights["sanet_transform"]), content=images["content"], style=images["style"],
                   out=tmp_path / "out.png")
    assert main(argv) == 0


def test_missing_decoder_needs_allow_random(tmp_path: Path, images: dict[str, Path], weights: dict[str, Path],
                                            capsys: pytest.CaptureFixture) -> None:
    argv = stylize("--model", "adain", "--vgg", str(weights["vgg"]), content=images["content"],
                   style=images["style"], out=tmp_path / "out.png")
    assert "need --decoder" in one_line_error(capsys, argv)
    assert main([*argv, "--allow-random"]) == 0


def test_empty_weight_file_says_empty(tmp_path: Path, images: dict[str, Path], weights: dict[str, Path],
                                      capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty.pth").touch()
    argv = stylize("--model", "adain", "--vgg", str(weights["vgg"]), "--decoder", str(tmp_path / "empty.pth"),
                   content=images["content"], style=images["style"], out=tmp_path / "out.png")
    assert "empty.pth is empty (0 bytes)" in one_line_error(capsys, argv)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_damaged_checkpoint_is_one_line(damage: str, tmp_path: Path, images: dict[str, Path],
                                        weights: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    blob = weights["model"].read_bytes()
    damaged = {"empty": b"", "truncated": blob[: len(blob) // 2], "garbage": b"not a torch file" * 10}[damage]
    (tmp_path / "model.pt").write_bytes(damaged)
    line = one_line_error(capsys, stylize("--checkpoint", str(tmp_path / "model.pt"), content=images["content"],
                                          style=images["style"], out=tmp_path / "out.png"))
    assert "model.pt" in line


# --- content and style files ------------------------------------------------------------------------

@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: write_truncated_jpeg(p / "c.jpg"), "truncated"),
    (lambda p: (p / "c.jpg").write_text("not an image") and p / "c.jpg", "not an image"),
    (lambda p: (p / "c.png").touch() or p / "c.png", "empty file"),
])
def test_one_bad_content_file_is_an_error(make, reason: str, tmp_path: Path, images: dict[str, Path],
                                          weights: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    content = make(tmp_path)
    line = one_line_error(capsys, stylize(content=content, style=images["style"], out=tmp_path / "out.png",
                                          weights=weights))
    assert f"{content.name}: {reason}" in line


def test_bad_style_file_is_an_error(tmp_path: Path, images: dict[str, Path], weights: dict[str, Path],
                                    capsys: pytest.CaptureFixture) -> None:
    style = write_truncated_jpeg(tmp_path / "style.jpg")
    line = one_line_error(capsys, stylize(content=images["content"], style=style, out=tmp_path / "out.png",
                                          weights=weights))
    assert "style.jpg: truncated" in line


def test_too_small_at_own_size_is_an_error(tmp_path: Path, images: dict[str, Path], weights: dict[str, Path],
                                           capsys: pytest.CaptureFixture) -> None:
    tiny = write_image(tmp_path / "tiny.png", 12, 10)
    argv = stylize(content=tiny, style=images["style"], out=tmp_path / "out.png", weights=weights)
    argv[argv.index("--content-size") + 1] = "0"
    assert "tiny.png: too small (12x10; the model needs at least 16x16" in one_line_error(capsys, argv)


def test_too_large_at_own_size_is_refused_from_the_header(tmp_path: Path) -> None:
    # A PNG of 9000 x 20 pixels is small on disk; refusing it must not need its pixels decoded.
    wide = tmp_path / "wide.png"
    Image.new("RGB", (MAX_SIDE + 808, 20)).save(wide)
    with pytest.raises(ValueError, match="too large"):
        load_image(wide, 0)
    with pytest.raises(ValueError, match="too large"):
        load_image(wide, 512)  # 230400 x 512 after resizing


def test_directory_skips_and_counts_bad_files(tmp_path: Path, images: dict[str, Path], weights: dict[str, Path],
                                              capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    write_image(folder / "a.png", seed=3)
    write_image(folder / "b.jpg", seed=4)
    write_truncated_jpeg(folder / "c.jpg")
    (folder / "d.png").write_text("not an image")
    write_image(folder / "e.png", 12, 10)  # below SANet's and AdaIN's minimum at its own size
    argv = stylize(content=folder, style=images["style"], out=tmp_path / "styled", weights=weights)
    argv[argv.index("--content-size") + 1] = "0"
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "styled").iterdir()) == ["a_stylized_style.png", "b_stylized_style.png"]
    assert "wrote 2 image(s)" in captured.out
    assert "skipped 3: 1 not an image, 1 too small, 1 truncated" in captured.out
    assert sum(line.startswith("skipped ") for line in captured.err.splitlines()) == 3


def test_directory_without_a_usable_image_is_an_error(tmp_path: Path, images: dict[str, Path],
                                                      weights: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    write_truncated_jpeg(folder / "c.jpg")
    code = main(stylize(content=folder, style=images["style"], out=tmp_path / "styled", weights=weights))
    err = capsys.readouterr().err
    assert code == 2 and "error: no usable content image" in err and "1 truncated" in err


# --- outputs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "image_format"), [("out.jpg", "JPEG"), ("out.png", "PNG"), ("out.webp", "WEBP")])
def test_one_image_is_written_to_the_named_file_in_its_format(name: str, image_format: str, tmp_path: Path,
                                                              images: dict[str, Path], weights: dict[str, Path]) -> None:
    assert main(stylize(content=images["content"], style=images["style"], out=tmp_path / name, weights=weights)) == 0
    with Image.open(tmp_path / name) as img:
        assert img.format == image_format and img.size == (35, 32)  # 40x36 -> shorter side 32


@pytest.mark.parametrize(("out", "content", "expected"), [
    ("out.txt", "file", "give an image file name ending in .png"),
    ("existing_dir", "file", "is a directory; for one content image give a file name"),
    ("out.png", "dir", "must be a directory when --content is a directory"),
])
def test_output_that_does_not_fit_the_content_is_refused(out: str, content: str, expected: str, tmp_path: Path,
                                                         images: dict[str, Path], weights: dict[str, Path],
                                                         capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "existing_dir").mkdir()
    source = images["content"] if content == "file" else images["content"].parent
    line = one_line_error(capsys, stylize(content=source, style=images["style"], out=tmp_path / out, weights=weights))
    assert expected in line


# --- 16-bit images: one conversion for stylize and the shard builder ---------------------------------

def test_16_bit_png_is_rescaled_alike_by_stylize_and_the_shard_builder(tmp_path: Path) -> None:
    levels = np.linspace(0, 65535, 48 * 40).reshape(40, 48).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(levels).save(path)  # uint16 -> mode I;16
    with Image.open(path) as img:
        assert img.mode == "I;16"
    expected = np.rint(levels / 257.0).astype(np.uint8)

    loaded = load_image(path)  # what distst stylize reads
    assert torch.equal((loaded * 255).round().to(torch.uint8)[0], torch.from_numpy(expected))
    assert loaded.mean().item() == pytest.approx(0.5, abs=0.01)  # not whitewashed (a clipping convert gives ~1)

    item = SourceItem(rel="deep.png", path=str(path))
    encoded = encode_item(0, item, EncodeOptions(resize=40, quality=100))
    assert isinstance(encoded, Encoded) and encoded.converted_from == "I;16"
    with Image.open(io.BytesIO(encoded.jpg)) as shard_image:
        from_shard = np.asarray(shard_image.convert("L"), dtype=np.int16)
    assert np.abs(from_shard - expected).max() <= 3  # the same values, up to JPEG's rounding
