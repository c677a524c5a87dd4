"""Stylising clips: the frame stylizers (the style side once == the model's forward; ONNX == torch), and
``distst stylize`` on tiny clips end to end (video and frames folders in and out, ``--onnx``), with every bad
input one line on stderr, exit code 2 and nothing left under ``--out``."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
import torch
from helpers import write_image

from distst.cli import main
from distst.config import model_section
from distst.export.stylizers import OnnxFrameStylizer, TorchStylizer
from distst.models import create
from distst.models.io import save_model
from distst.video.io import probe_clip, read_clip, write_clip

RATE = Fraction(24000, 1001)
SIZE = "32"  # --content-size and --style-size: 48x64 frames -> 32x42


def smooth_frames(count: int = 5, height: int = 48, width: int = 64) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return torch.stack([torch.stack([x, y, torch.full_like(x, (i + 1) / (count + 1))]) for i in range(count)])


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 5-frame clip as an MP4 and as a frames folder, a style image, a 1/8-width AdaIN file and its export."""
    tmp = tmp_path_factory.mktemp("media")
    frames = smooth_frames()
    torch.manual_seed(0)
    model_file = save_model(create(model_section(name="adain", width=0.125)), tmp / "adain.pt")
    assert main(["export", str(model_file), "--out", str(tmp / "onnx")]) == 0
    return {"video": write_clip(tmp / "clip.mp4", frames, RATE), "frames": write_clip(tmp / "frames", frames, RATE),
            "style": write_image(tmp / "style.png", 50, 40, seed=3), "model": model_file, "onnx": tmp / "onnx"}


def stylize(content: Path, style: Path, out: Path, *args: str) -> list[str]:
    return ["stylize", "--content", str(content), "--style", str(style), "--out", str(out),
            "--content-size", SIZE, "--style-size", SIZE, "--batch-size", "2", *args]


def random_adain(content: Path, style: Path, out: Path, *args: str) -> list[str]:
    return stylize(content, style, out, "--width", "0.125", "--allow-random", *args)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_the_parsers_video_suffixes_are_the_readers() -> None:
    from distst.commands import stylize as command
    from distst.video import io

    assert command.VIDEO_SUFFIXES == io.VIDEO_SUFFIXES  # kept literal there so that the parser imports nothing


# --- stylizers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "tolerance"), [
    ("adain", 1e-5), ("sanet", 1e-5), ("manet", 1e-5), ("lst", 1e-5), ("adaattn", 1e-5),
    # MCCNet's style statistic is a ratio of sums: its own forward differs by 2e-5 between a batch of 3 and
    # one frame at a time, float noise it amplifies, not a difference of the paths.
    ("mccnet", 1e-4),
])
def test_cached_style_equals_the_forward(name: str, tolerance: float) -> None:
    model = create(model_section(name=name, width=0.25)).eval()
    m = model.input_multiple
    side = -(-max(model.min_size, 32) // m) * m
    frames, style = torch.rand(3, 3, side, side + m), torch.rand(1, 3, side + m, side)
    stylizer = TorchStylizer(model)
    assert stylizer.cache is not None  # the style side once
    stylizer.set_style(style)
    with torch.no_grad():
        expected = model(frames, style.expand(3, -1, -1, -1))[..., :side, :side + m].clamp(0, 1)
    for batch in (frames, frames[:2]):  # the cached side expanded to each batch size
        out = stylizer(batch)
        assert out.shape == batch.shape
        assert float((out - expected[: len(batch)]).abs().max()) < tolerance


@pytest.mark.parametrize(("name", "alpha"), [("adain", 0.5), ("cyclegan", 1.0)])
def test_alpha_below_one_and_models_without_a_style_side_run_the_forward(name: str, alpha: float) -> None:
    model = create(model_section(name=name, width=0.25)).eval()
    frames, style = torch.rand(2, 3, 32, 40), torch.rand(1, 3, 32, 32)
    stylizer = TorchStylizer(model, alpha=alpha)
    assert stylizer.cache is None
    stylizer.set_style(style)
    with torch.no_grad():
        expected = model(frames, style.expand(2, -1, -1, -1), alpha=alpha).clamp(0, 1)
    assert torch.equal(stylizer(frames), expected)


def test_onnx_frames_equal_torch_frames(media: dict[str, Path]) -> None:
    from distst.models.io import load_model

    model, _ = load_model(media["model"])
    frames, style = torch.rand(2, 3, 36, 44), torch.rand(1, 3, 40, 32)
    torch_side, onnx_side = TorchStylizer(model), OnnxFrameStylizer(media["onnx"], threads=1)
    assert (onnx_side.multiple, onnx_side.min_size) == (model.input_multiple, model.min_size)
    for stylizer in (torch_side, onnx_side):
        stylizer.set_style(style)
    assert float((onnx_side(frames) - torch_side(frames)).abs().max()) < 1e-4


# --- the command --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("content", "out", "extra"), [
    ("video", "styled.mp4", []),
    ("video", "styled.webm", []),
    ("frames", "styled.mp4", []),  # a video --out makes the folder a clip
    ("video", "styled", []),  # no suffix: a frames folder
    ("frames", "styled", ["--frames"]),
])
def test_clips_in_and_out(content: str, out: str, extra: list[str], media: dict[str, Path], tmp_path: Path,
                          capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / out
    assert main(random_adain(media[content], media["style"], target, *extra)) == 0
    assert f"wrote 5 frames: {target} (" in capsys.readouterr().out
    info = probe_clip(target)
    assert info.frame_count == 5
    assert (info.width, info.height) == (42, 32)  # 48x64 -> shorter side 32 (42 is even: no padding)
    if target.suffix:  # a video keeps its exact rate; a frames folder is 25 fps unless --fps says otherwise
        assert info.fps == (RATE if content == "video" else 25)
    assert leftovers(tmp_path) == []


def test_a_frames_folder_takes_its_rate_from_fps(media: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "styled.mp4"
    assert main(random_adain(media["frames"], media["style"], out, "--fps", "12.5")) == 0
    assert probe_clip(out).fps == Fraction(25, 2)
    out = tmp_path / "default.mp4"
    assert main(random_adain(media["frames"], media["style"], out, "--frames")) == 0
    assert probe_clip(out).fps == 25


def test_a_folder_without_frames_or_a_video_out_stays_a_directory_of_images(media: dict[str, Path],
                                                                             tmp_path: Path) -> None:
    assert main(random_adain(media["frames"], media["style"], tmp_path / "styled")) == 0
    assert len(list((tmp_path / "styled").glob("frame_*_stylized_style.png"))) == 5


def test_onnx_clip_and_image(media: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "onnx.mp4"
    assert main(stylize(media["video"], media["style"], out, "--onnx", str(media["onnx"]), "--threads", "1")) == 0
    assert "wrote 5 frames" in capsys.readouterr().out
    frames, fps = read_clip(out)
    assert frames.shape == (5, 3, 32, 42) and fps == pytest.approx(float(RATE))
    image = tmp_path / "one.png"
    assert main(stylize(media["frames"] / "frame_000001.png", media["style"], image, "--onnx", str(media["onnx"]),
                        "--variant", "fp32")) == 0
    assert image.is_file()


# --- bad input through the command: one line, exit 2, nothing written ---------------------------------

def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distst stylize: error: "), err
    return lines[0]


def _text_video(tmp: Path) -> Path:
    (tmp / "bad.mp4").write_text("not a video")
    return tmp / "bad.mp4"


def _empty_folder(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _mismatched(tmp: Path) -> Path:
    folder = tmp / "clip"
    folder.mkdir()
    write_image(folder / "frame_1.png", 40, 36)
    write_image(folder / "frame_2.png", 36, 40)
    return folder


def _truncated_frame(tmp: Path) -> Path:
    """The last frame's header reads, its data is cut: the clip fails after earlier frames were written."""
    folder = tmp / "clip"
    folder.mkdir()
    for i in range(1, 5):
        write_image(folder / f"frame_{i}.png", 40, 36, seed=i)
    data = (folder / "frame_4.png").read_bytes()
    (folder / "frame_4.png").write_bytes(data[: len(data) // 2])
    return folder


@pytest.mark.parametrize(("make", "out", "args", "expected"), [
    (_text_video, "out.mp4", [], "bad.mp4: not a readable video"),
    (_empty_folder, "out.mp4", [], "empty: no frames"),
    (_mismatched, "out.mp4", ["--frames"], "frame_1.png is 40x36, frame_2.png is 36x40"),
    (_truncated_frame, "out.mp4", [], "frame_4.png: truncated"),
    (_truncated_frame, "out", ["--frames"], "frame_4.png: truncated"),
    (lambda tmp: None, "out.mp4", ["--content-size", "8"], "the model needs at least 16x16"),
    (lambda tmp: None, "out.gif", [], "give a video file name ending in .mp4"),
    (lambda tmp: None, "out.mp4", ["--fps", "12"], "--fps sets the rate of a frames-folder clip"),
    (lambda tmp: None, "out.mp4", ["--frames"], "--frames needs a folder of numbered frames"),
    (_empty_folder, "out.mp4", ["--fps", "0"], "--fps must be a positive frame rate"),
])
def test_bad_clip_inputs_are_one_line_and_leave_nothing(make, out: str, args: list[str], expected: str,  # noqa: ANN001
                                                        media: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    content = make(tmp_path) or media["video"]
    line = one_line_error(capsys, random_adain(content, media["style"], tmp_path / out, *args))
    assert expected in line
    assert not (tmp_path / out).exists() and leftovers(tmp_path) == []


def test_the_clip_itself_is_no_output(media: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    frames = write_clip(tmp_path / "frames", smooth_frames(2), 25)
    before = sorted(p.read_bytes() for p in frames.iterdir())
    line = one_line_error(capsys, random_adain(frames, media["style"], frames, "--frames"))
    assert "is the clip being stylised: write to another name" in line
    assert sorted(p.read_bytes() for p in frames.iterdir()) == before
    line = one_line_error(capsys, random_adain(media["video"], tmp_path / "missing.png", tmp_path / "o.mp4"))
    assert "--style" in line and "missing.png does not exist" in line


@pytest.mark.parametrize(("args", "expected"), [
    (["--checkpoint", "model.pt"], "--onnx runs the exported graphs (their manifest names the model): drop "
                                   "--checkpoint"),
    (["--vgg", "vgg.pth", "--model", "sanet"], "drop --vgg, --model"),
    (["--alpha", "0.5"], "--alpha needs a torch model"),
    (["--device", "cuda"], "--onnx runs on the CPU"),
    (["--variant", "int8"], "has no int8 graphs; its variants: fp32"),
])
def test_onnx_with_torch_flags_is_one_line(args: list[str], expected: str, media: dict[str, Path],
                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = stylize(media["video"], media["style"], tmp_path / "out.mp4", "--onnx", str(media["onnx"]), *args)
    assert expected in one_line_error(capsys, argv)
    assert list(tmp_path.iterdir()) == []


def test_onnx_flags_need_an_export(media: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    line = one_line_error(capsys, random_adain(media["video"], media["style"], tmp_path / "o.mp4", "--threads", "2"))
    assert "--variant and --threads apply to --onnx EXPORT_DIR only" in line
    line = one_line_error(capsys, stylize(media["video"], media["style"], tmp_path / "o.mp4", "--onnx", str(tmp_path)))
    assert "manifest.json does not exist: not a distst export directory" in line
