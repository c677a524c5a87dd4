"""``distst evaluate temporal`` end to end: a model file and its ONNX export measured the same on the same clips;
a written synthetic clip read back as a user's clip measures the same; RAFT flow from a local file; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import write_image

from distst.cli import main
from distst.config import model_section
from distst.models import build
from distst.models.io import save_model
from distst.video.clips import write_flow_clip

ARGS = ["--synthetic", "2", "--frames", "3", "--size", "32", "--style-size", "32"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("temporal")
    torch.manual_seed(0)
    model = save_model(build(model_section(name="adain", width=0.125)), tmp / "adain.pt")
    return {"model": model, "style": write_image(tmp / "style.png", 48, 40), "tmp": tmp}


def _evaluate(*args: str, out: Path) -> list[dict]:
    assert main(["evaluate", "temporal", *args, "--json", str(out)]) == 0
    return json.loads(out.read_text())["clips"]


def test_a_written_synthetic_clip_read_back_as_a_users_clip_measures_the_same(files, tmp_path: Path) -> None:  # noqa: ANN001
    written = tmp_path / "clips"
    synthetic = _evaluate("--checkpoint", str(files["model"]), "--style", str(files["style"]), *ARGS,
                          "--write-clips", str(written), out=tmp_path / "a.json")
    assert [c["source"] for c in synthetic] == ["synthetic (exact flow)"] * 2
    assert all(0 < c["temporal_error"] < 1 and 0 < c["temporal_l1"] < 1 for c in synthetic)
    clip_dirs = sorted(p for p in written.iterdir() if p.is_dir())
    again = _evaluate("--checkpoint", str(files["model"]), "--style", str(files["style"]), "--synthetic", "0",
                      "--style-size", "32", *[a for d in clip_dirs for a in ("--clip", str(d))], out=tmp_path / "b.json")
    assert [c["source"] for c in again] == ["flow files"] * 2
    for a, b in zip(synthetic, again, strict=True):  # PNG frames are 8-bit: the written clip is a rounded copy
        assert b["temporal_error"] == pytest.approx(a["temporal_error"], rel=0.05, abs=1e-6)


def test_the_exported_graph_measures_as_the_model(files, tmp_path: Path) -> None:  # noqa: ANN001
    assert main(["export", str(files["model"]), "--out", str(tmp_path / "onnx")]) == 0
    torch_rows = _evaluate("--checkpoint", str(files["model"]), "--style", str(files["style"]), *ARGS,
                           out=tmp_path / "t.json")
    graph_rows = _evaluate("--onnx", str(tmp_path / "onnx"), "--style", str(files["style"]), *ARGS,
                           out=tmp_path / "o.json")
    for a, b in zip(torch_rows, graph_rows, strict=True):
        assert b["temporal_error"] == pytest.approx(a["temporal_error"], rel=1e-3, abs=1e-9)


def test_raft_estimates_the_flow_of_a_frames_folder_from_a_local_weights_file(files, tmp_path: Path) -> None:  # noqa: ANN001
    from torchvision.models.optical_flow import raft_small

    # raft_small's layout with every weight zero: it predicts zero flow, consistent both ways (random weights'
    # flows would fail the forward-backward check everywhere), so the warping error is that of unwarped frames.
    torch.save({k: torch.zeros_like(v) for k, v in raft_small(weights=None).state_dict().items()},
               tmp_path / "raft_small.pth")
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        write_image(frames / f"frame_{i + 1:04d}.png", 40, 40, seed=i)
    rows = _evaluate("--checkpoint", str(files["model"]), "--style", str(files["style"]), "--synthetic", "0",
                     "--video", str(frames), "--raft", str(tmp_path / "raft_small.pth"), "--video-size", "32", "--style-size", "32",
                     out=tmp_path / "r.json")
    assert rows[0]["source"] == "RAFT flow" and rows[0]["frames"] == 3 and rows[0]["size"] == [32, 32]
    from distst.images import load_image
    from distst.models.io import load_model
    from distst.video.io import read_clip

    model, _ = load_model(files["model"])
    clip, _ = read_clip(frames, 32, model.input_multiple, model.min_size)
    style = load_image(files["style"], 32, model.input_multiple, model.min_size)[None].expand(3, -1, -1, -1)
    with torch.no_grad():
        out = model.eval()(clip, style).clamp(0, 1).double()
    assert rows[0]["temporal_error"] == pytest.approx(float((out[1:] - out[:-1]).square().mean()), rel=1e-4)


@pytest.mark.parametrize(("extra", "message"), [
    (["--video", "VIDEO"], "--video needs --raft"),
    (["--clip", "missing_dir"], "--clip missing_dir does not exist"),
    (["--synthetic", "0"], "no clips"),
])
def test_bad_input_ends_in_one_line(files, tmp_path: Path, capsys, extra: list[str], message: str) -> None:  # noqa: ANN001
    extra = [str(files["style"]) if a == "VIDEO" else a for a in extra]
    code = main(["evaluate", "temporal", "--checkpoint", str(files["model"]), "--style", str(files["style"]), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and message in err[0]


def test_a_user_clip_without_flow_is_refused(files, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from distst.video.clips import synthetic_clips

    clip = write_flow_clip(tmp_path / "clip", synthetic_clips(1, 3, 32)[0])
    for path in (clip / "flow").iterdir():
        path.unlink()
    code = main(["evaluate", "temporal", "--checkpoint", str(files["model"]), "--style", str(files["style"]),
                 "--synthetic", "0", "--clip", str(clip)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "flow" in err[0]
