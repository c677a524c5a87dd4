"""Clips on disk (``distst.video.io``): video files and frames folders written and read back, the frames sized as
``load_image`` sizes images, every bad input as one ``ClipError`` line, and atomic writes (a failure leaves
nothing under the output name, and an earlier clip there stays as it was)."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import pytest
import torch
from helpers import write_image
from PIL import Image

from distst.images import load_image
from distst.video import io
from distst.video.io import ClipError, ClipReader, ClipWriter, list_frames, probe_clip, read_clip, write_clip

NTSC = Fraction(30000, 1001)
# Mean absolute difference a lossy codec may leave on smooth frames (measured: ~0.008 for all four encoders).
LOSSY_MAD = 0.03


def smooth_frames(count: int = 5, height: int = 48, width: int = 64) -> torch.Tensor:
    """Gradients that change from frame to frame: what a codec keeps well (noise it does not)."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return torch.stack([torch.stack([x, y, torch.full_like(x, (i + 1) / (count + 1))]) for i in range(count)])


def leftovers(folder: Path) -> list[str]:
    """Hidden partial files or folders a write left beside its output."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def failing(frames: torch.Tensor, after: int) -> Iterator[torch.Tensor]:
    yield from frames[:after]
    raise RuntimeError("decoder died")


# --- round trips --------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".mkv", ".mov", ".avi"])
def test_video_round_trip_keeps_count_size_and_exact_rate(suffix: str, tmp_path: Path) -> None:
    frames = smooth_frames()
    out = write_clip(tmp_path / f"clip{suffix}", frames, NTSC)
    info = probe_clip(out)
    assert (info.frame_count, info.width, info.height) == (5, 64, 48)
    assert info.fps == NTSC  # the exact rational, not 29.97
    back, fps = read_clip(out)
    assert back.shape == frames.shape and back.dtype == torch.float32
    assert fps == pytest.approx(30000 / 1001)
    assert float((back - frames).abs().mean()) < LOSSY_MAD
    assert 0 <= float(back.min()) and float(back.max()) <= 1


def test_mp4_is_h264_and_falls_back_to_mpeg4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = smooth_frames(3)
    with av.open(str(write_clip(tmp_path / "h264.mp4", frames, 25))) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    monkeypatch.setattr(io, "has_encoder", lambda name: name != "libx264")
    with av.open(str(write_clip(tmp_path / "mpeg4.mp4", frames, 25))) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert float((read_clip(tmp_path / "mpeg4.mp4")[0] - frames).abs().mean()) < LOSSY_MAD
    monkeypatch.setattr(io, "has_encoder", lambda name: False)
    with pytest.raises(ClipError, match=r"no encoder for \.webm \(tried libvpx\)"):
        write_clip(tmp_path / "none.webm", frames, 25)


def test_odd_sizes_are_padded_by_repeating_the_last_row_and_column(tmp_path: Path) -> None:
    frames = smooth_frames(3, 33, 47)
    back, _ = read_clip(write_clip(tmp_path / "odd.mp4", frames, 25))
    assert back.shape[-2:] == (34, 48)  # yuv420p needs even sides
    assert float((back[..., :33, :47] - frames).abs().mean()) < LOSSY_MAD
    assert float((back[..., 33, :47] - frames[..., 32, :]).abs().mean()) < LOSSY_MAD
    assert float((back[..., :33, 47] - frames[..., :, 46]).abs().mean()) < LOSSY_MAD


def test_frames_folder_round_trip_is_lossless_at_8_bits(tmp_path: Path) -> None:
    frames = smooth_frames(4, 31, 45)  # PNG frames keep odd sizes
    out = write_clip(tmp_path / "frames", frames, 25)
    assert sorted(p.name for p in out.iterdir()) == [f"frame_{i:06d}.png" for i in range(1, 5)]
    back, fps = read_clip(out)
    assert fps == 25 and back.shape == frames.shape
    assert float((back - frames).abs().max()) <= 0.5 / 255 + 1e-6
    assert probe_clip(out, fps=12.5).fps == Fraction(25, 2)


def test_frames_are_in_natural_order(tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    folder.mkdir()
    for n in (10, 2, 1, 33, 3):
        Image.new("RGB", (20, 16), (n, 0, 0)).save(folder / f"frame_{n}.png")
    (folder / "notes.txt").write_text("not a frame")
    assert [p.name for p in list_frames(folder)] == [f"frame_{n}.png" for n in (1, 2, 3, 10, 33)]
    back, _ = read_clip(folder)
    assert (back[:, 0, 0, 0] * 255).round().tolist() == [1, 2, 3, 10, 33]


def test_frames_are_sized_as_load_image_sizes_images(tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(3):
        write_image(folder / f"f{i}.jpg", 70, 50, seed=i)
    with ClipReader(folder, size=40, multiple=16, min_size=32) as reader:
        assert (len(reader), reader.height, reader.width) == (3, 32, 48)  # 50x70 -> 40x56 -> cropped to 32x48
        for i, frame in enumerate(reader):
            assert torch.equal(frame, load_image(folder / f"f{i}.jpg", 40, 16, 32))


def test_video_frames_stream_one_at_a_time(tmp_path: Path) -> None:
    out = write_clip(tmp_path / "clip.mp4", smooth_frames(6), 25)
    with ClipReader(out, size=24) as reader:
        assert (len(reader), reader.height, reader.width) == (6, 24, 32)
        frames = iter(reader)
        assert next(frames).shape == (3, 24, 32)
        assert sum(1 for _ in frames) == 5


# --- bad input: one ClipError line naming the file ----------------------------------------------------

def zeroed_mdat(path: Path) -> Path:
    """A valid MP4 whose frame data is zeros: the container opens, no frame decodes."""
    data = bytearray(write_clip(path, smooth_frames(3), 25).read_bytes())
    at = data.find(b"mdat")
    size = int.from_bytes(data[at - 4:at], "big")
    data[at + 4:at - 4 + size] = bytes(size - 8)
    path.write_bytes(bytes(data))
    return path


def truncated(path: Path) -> Path:
    data = write_clip(path, smooth_frames(3), 25).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def mismatched(tmp: Path) -> Path:
    folder = tmp / "clip"
    folder.mkdir()
    write_image(folder / "frame_1.png", 40, 36)
    write_image(folder / "frame_2.png", 40, 30)
    return folder


def bad_frame(tmp: Path) -> Path:
    folder = tmp / "clip"
    folder.mkdir()
    write_image(folder / "frame_1.png", 40, 36)
    (folder / "frame_2.png").write_text("not an image")
    return folder


@pytest.mark.parametrize(("make", "expected"), [
    (lambda p: p / "missing.mp4", r"missing\.mp4 does not exist"),
    (lambda p: (p / "text.mp4").write_text("hello") and p / "text.mp4", r"text\.mp4: not a readable video"),
    (lambda p: (p / "empty.mp4").touch() or p / "empty.mp4", r"empty\.mp4: empty file"),
    (lambda p: truncated(p / "cut.mp4"), r"cut\.mp4: (no video stream|not a readable video)"),
    (lambda p: zeroed_mdat(p / "zeros.mp4"), r"zeros\.mp4: (no decodable frame|frame 1 cannot be decoded)"),
    (lambda p: (p / "none").mkdir() or p / "none", r"none: no frames \(image files"),
    (mismatched, r"frames differ in size: frame_1\.png is 40x36, frame_2\.png is 40x30"),
    (bad_frame, r"frame_2\.png: not an image"),
])
def test_bad_clips_are_one_clip_error(make, expected: str, tmp_path: Path) -> None:  # noqa: ANN001
    path = make(tmp_path)
    with pytest.raises(ClipError, match=expected) as caught:
        read_clip(path)
    assert "\n" not in str(caught.value)


def test_a_frame_that_fails_to_decode_midway_names_it(tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    folder.mkdir()
    write_image(folder / "frame_1.png", 40, 36)
    whole = write_image(folder / "frame_2.png", 40, 36, seed=1).read_bytes()
    (folder / "frame_2.png").write_bytes(whole[: len(whole) // 2])  # the header still reads
    with pytest.raises(ClipError, match=r"frame_2\.png: truncated"):
        read_clip(folder)


def test_frames_the_model_refuses_name_its_minimum(tmp_path: Path) -> None:
    out = write_clip(tmp_path / "clip.mp4", smooth_frames(2), 25)
    with pytest.raises(ClipError, match=r"clip\.mp4: frames are 21x16 after resizing; the model needs at least "
                                        r"32x32"):
        ClipReader(out, size=16, min_size=32)


# --- atomic writes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm", "frames"])
def test_a_failure_midway_leaves_nothing_under_the_output_name(name: str, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="decoder died"):
        write_clip(tmp_path / name, failing(smooth_frames(4), after=3), 25)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["clip.mp4", "frames"])
def test_an_earlier_clip_is_untouched_by_a_failed_write_and_replaced_by_a_good_one(name: str, tmp_path: Path) -> None:
    out = write_clip(tmp_path / name, smooth_frames(4), 25)
    before = {p.name: p.read_bytes() for p in ([out] if out.is_file() else out.iterdir())}
    with pytest.raises(KeyboardInterrupt), ClipWriter(out, 25) as writer:
        writer.write(smooth_frames(2) * 0.5)
        raise KeyboardInterrupt
    assert {p.name: p.read_bytes() for p in ([out] if out.is_file() else out.iterdir())} == before
    assert leftovers(tmp_path) == []
    write_clip(out, smooth_frames(2), 25)
    assert probe_clip(out).frame_count == 2  # replaced whole: no frame 3 and 4 of the earlier clip
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("frames", "expected"), [
    ([], r"no frames to write"),
    ([smooth_frames(1, 32, 32)[0], smooth_frames(1, 32, 40)[0]], r"frame 2 is 40x32, the clip's frames are 32x32"),
])
def test_unwritable_frames_are_refused_and_leave_nothing(frames: list, expected: str, tmp_path: Path) -> None:
    with pytest.raises(ClipError, match=expected):
        write_clip(tmp_path / "clip.mp4", frames, 25)
    assert list(tmp_path.iterdir()) == []


def test_outputs_that_cannot_take_a_clip_are_refused(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"keep me")
    with pytest.raises(ClipError, match=r"photos holds files other than numbered frames \(e\.g\. holiday\.jpg\)"):
        write_clip(photos, smooth_frames(1), 25)
    assert (photos / "holiday.jpg").read_bytes() == b"keep me"
    with pytest.raises(ClipError, match=r"out\.gif: give a video file name ending in \.mp4"):
        ClipWriter(tmp_path / "out.gif", 25)
    (tmp_path / "taken.mp4").mkdir()
    with pytest.raises(ClipError, match=r"taken\.mp4 is a directory"):
        ClipWriter(tmp_path / "taken.mp4", 25)
    with pytest.raises(ClipError, match=r"frame rate must be positive"):
        ClipWriter(tmp_path / "out.mp4", 0)
