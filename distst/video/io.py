"""Clips <-> frame tensors: video files (decoded and encoded with PyAV) or folders of numbered frames.

PyAV directly, not ``torchvision.io``: torchvision's video API is deprecated and being removed in favour of
TorchCodec, and it was a wrapper of PyAV anyway (PyAV is also what encodes). Reading streams one frame at a
time, so a long clip is never held in memory; frames come out as 3 x H x W float tensors in [0, 1], resized as
``distst.images.load_image`` resizes (shorter side to ``size``, center-cropped to the model's ``multiple``).

Writing is atomic: a clip is written under a hidden temporary sibling name and moved to the output name only
once every frame is in, so a failure or Ctrl-C never leaves half a clip (or spoils an earlier one) under it.
Video files are written at a constant rate, the given one; timestamps of a variable-rate source and audio are
not kept. yuv420p (what H.264, MPEG-4 and VP8 store) needs even sizes: an odd height or width is padded by
repeating the last row or column, so such a clip is one pixel taller or wider than its frames. PNG frames keep
the frames' size.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..atomic import fsync_dir, replace
from ..errors import DataError
from ..images import (
    IMAGE_SUFFIXES,
    MAX_SIDE,
    ImageError,
    center_crop,
    cropped_shape,
    load_image,
    resize,
    resized_shape,
    unreadable_reason,
)

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi")
DEFAULT_FPS = 25
FRAME_NAME = "frame_{:06d}.png"
FRAME_FILE = re.compile(r"frame_\d{6,}\.png")
CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
# Encoders by suffix, the first one this PyAV build has wins (H.264 in AVI plays badly: MPEG-4 there).
ENCODERS = {".mp4": ("libx264", "mpeg4"), ".mov": ("libx264", "mpeg4"), ".mkv": ("libx264", "mpeg4"),
            ".webm": ("libvpx",), ".avi": ("mpeg4",)}
# x264 at CRF 18 is visually lossless; the bitrate-driven encoders get ~0.2 bits a pixel (12 Mb/s at 1080p30).
ENCODER_OPTIONS = {"libx264": {"crf": "18"}, "libvpx": {"crf": "10", "cpu-used": "4"}}
BITS_PER_PIXEL = 0.2


class ClipError(DataError):
    """A clip (video file or frames folder) that cannot be read or written as given; names it and says why."""


@cache
def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except ValueError:  # UnknownCodecError
        return False
    return True


def encoder_for(out: str | Path) -> str:
    """The encoder a video file named ``out`` is written with (by its suffix)."""
    suffix = Path(out).suffix.lower()
    if suffix not in ENCODERS:
        raise ClipError(f"{out}: not a video file name; give one ending in {', '.join(VIDEO_SUFFIXES)}")
    for name in ENCODERS[suffix]:
        if has_encoder(name):
            return name
    raise ClipError(f"{out}: this PyAV build has no encoder for {suffix} (tried {', '.join(ENCODERS[suffix])})")


def is_video_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def as_fps(fps: float | Fraction) -> Fraction:
    """``fps`` as an exact positive rational (29.97 -> 2997/100)."""
    if isinstance(fps, Fraction):
        rate = fps
    elif isinstance(fps, (int, float)) and math.isfinite(fps):
        rate = Fraction(str(fps)) if isinstance(fps, float) else Fraction(fps)
    else:
        raise ClipError(f"frame rate must be a positive number, got {fps!r}")
    if rate <= 0:
        raise ClipError(f"frame rate must be positive, got {fps}")
    return rate


def _av_reason(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)


# --- reading ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClipInfo:
    """A clip's metadata; ``width`` and ``height`` are the source frames' size (before resizing)."""

    path: Path
    fps: Fraction
    frame_count: int
    width: int
    height: int


def natural_key(name: str) -> list[Any]:
    """Sort key with the numbers in a name compared as numbers: frame_2 before frame_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def list_frames(folder: str | Path) -> list[Path]:
    """The image files directly in ``folder``, in natural order of their names."""
    folder = Path(folder)
    found = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
             and p.is_file()]
    if not found:
        raise ClipError(f"{folder}: no frames (image files {', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
    return sorted(found, key=lambda p: (natural_key(p.name), p.name))  # frame_1 vs frame_01: a fixed order


def _header_size(path: Path) -> tuple[int, int]:
    if path.stat().st_size == 0:
        raise ClipError(f"{path}: empty file")
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as err:
        raise ClipError(f"{path}: {unreadable_reason(err)} ({err})") from None


class _FolderSource:
    """Numbered image files; every header is read up front so that mismatched sizes fail before any work."""

    def __init__(self, folder: Path, fps: float | Fraction | None) -> None:
        self.files = list_frames(folder)
        width, height = _header_size(self.files[0])
        for path in self.files[1:]:
            size = _header_size(path)
            if size != (width, height):
                raise ClipError(f"{folder}: frames differ in size: {self.files[0].name} is {width}x{height}, "
                                f"{path.name} is {size[0]}x{size[1]}")
        self.info = ClipInfo(folder, as_fps(fps or DEFAULT_FPS), len(self.files), width, height)

    def frames(self) -> Iterator[Tensor]:
        for path in self.files:
            try:
                yield load_image(path)
            except ImageError as err:
                raise ClipError(str(err)) from None

    def close(self) -> None:
        pass


class _VideoSource:
    """One video stream of a container; the first frame is decoded on opening (a file without one fails early)."""

    def __init__(self, path: Path, fps: float | Fraction | None) -> None:
        self.path = path
        if path.stat().st_size == 0:
            raise ClipError(f"{path}: empty file")
        self.container = self._open()
        try:
            self.stream = self.container.streams.video[0]
            self.stream.thread_type = "AUTO"
            rate = self.stream.average_rate or self.stream.guessed_rate or fps or DEFAULT_FPS
            count = self.stream.frames or self._count_packets()
            self._decoded = self._decode()
            self._first = next(self._decoded, None)
            if self._first is None:
                raise ClipError(f"{path}: no decodable frame in the video")
            height, width = self._first.shape[-2:]
            self.info = ClipInfo(path, as_fps(rate), count, width, height)
        except BaseException:
            self.container.close()
            raise

    def _open(self) -> Any:
        try:
            container = av.open(str(self.path))
        except av.FFmpegError as err:
            raise ClipError(f"{self.path}: not a readable video ({_av_reason(err)})") from None
        if not container.streams.video:
            container.close()
            raise ClipError(f"{self.path}: no video stream (not a video, or a truncated file)")
        return container

    def _count_packets(self) -> int:
        """Frames of a container that does not store their count (Matroska, WebM): its packets, not decoded."""
        container = self._open()
        try:
            return sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)
        except av.FFmpegError:
            return 0  # damaged further in: decoding says where
        finally:
            container.close()

    def _decode(self) -> Iterator[Tensor]:
        index = 0
        try:
            for frame in self.container.decode(self.stream):
                index += 1
                yield torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).float().div_(255)
        except av.FFmpegError as err:
            raise ClipError(f"{self.path}: frame {index + 1} cannot be decoded ({_av_reason(err)})") from None

    def frames(self) -> Iterator[Tensor]:
        first, self._first = self._first, None
        if first is None:
            return
        expected = first.shape
        yield first
        for index, frame in enumerate(self._decoded, start=2):
            if frame.shape != expected:
                raise ClipError(f"{self.path}: frame {index} is {frame.shape[2]}x{frame.shape[1]}, "
                                f"the first is {expected[2]}x{expected[1]}")
            yield frame

    def close(self) -> None:
        self.container.close()


def _open_source(path: str | Path, fps: float | Fraction | None) -> _FolderSource | _VideoSource:
    path = Path(path)
    if path.is_dir():
        return _FolderSource(path, fps)
    if not path.is_file():
        raise ClipError(f"{path} does not exist")
    return _VideoSource(path, fps)


class ClipReader:
    """A clip's frames, streamed once, sized for a model: iterate for 3 x H x W tensors in [0, 1].

    ``size``, ``multiple`` and ``min_size`` as ``load_image``: the shorter side resized to ``size`` (0 keeps
    it), center-cropped to multiples of ``multiple``; a clip smaller than ``min_size`` after that is refused.
    ``fps`` is a frames folder's rate (default 25); a video file has its own. ``height``/``width`` are the
    frames' size as they come out.
    """

    def __init__(self, path: str | Path, size: int = 0, multiple: int = 1, min_size: int = 1,
                 fps: float | Fraction | None = None) -> None:
        self.source = _open_source(path, fps)
        self.info = self.source.info
        self.size = size
        resized = resized_shape(self.info.width, self.info.height, size)
        self.height, self.width = cropped_shape(*resized, multiple)
        try:
            if max(self.height, self.width) > MAX_SIDE:
                raise ClipError(f"{self.info.path}: frames would be {self.width}x{self.height} after resizing; "
                                f"the limit is {MAX_SIDE} px a side")
            if min(self.height, self.width) < min_size:
                raise ClipError(f"{self.info.path}: frames are {self.width}x{self.height} after resizing; the "
                                f"model needs at least {min_size}x{min_size}: resize them, e.g. with --content-size")
        except ClipError:
            self.close()
            raise
        self._resized = resized

    def __iter__(self) -> Iterator[Tensor]:
        for frame in self.source.frames():
            if self.size:
                frame = resize(frame, self._resized)
            if frame.shape[-2:] != (self.height, self.width):
                frame = center_crop(frame, (self.height, self.width))
            yield frame.clamp_(0, 1)

    def __len__(self) -> int:
        return self.info.frame_count

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> ClipReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def probe_clip(path: str | Path, fps: float | Fraction | None = None) -> ClipInfo:
    """A clip's metadata, checking it can be read (a video's first frame is decoded)."""
    with ClipReader(path, fps=fps) as reader:
        return reader.info


def read_clip(path: str | Path, size: int = 0, multiple: int = 1, min_size: int = 1,
              fps: float | Fraction | None = None) -> tuple[Tensor, float]:
    """A whole clip as T x 3 x H x W in [0, 1] and its frame rate (for short clips: it is all in memory)."""
    with ClipReader(path, size, multiple, min_size, fps) as reader:
        return torch.stack(list(reader)), float(reader.info.fps)


# --- writing ------------------------------------------------------------------------------------------

def check_clip_output(out: str | Path, content: str | Path | None = None) -> None:
    """Refuse an output name a clip cannot be written to: a video file by suffix, else a frames folder (new,
    empty, or an earlier frames folder: it is replaced only once the new clip is complete); never the clip
    ``content`` being read (it would be replaced by its own stylisation)."""
    out = Path(out)
    if content is not None and out.resolve() == Path(content).resolve():
        raise ClipError(f"{out} is the clip being stylised: write to another name")
    if is_video_file(out):
        if out.is_dir():
            raise ClipError(f"{out} is a directory; give a video file name or a folder without a video suffix")
        encoder_for(out)
        return
    if out.is_file():
        raise ClipError(f"{out} is a file; give a video file name ({', '.join(VIDEO_SUFFIXES)}) or a folder name")
    if not out.is_dir() and out.suffix:
        raise ClipError(f"{out}: give a video file name ending in {', '.join(VIDEO_SUFFIXES)}, or a folder name "
                        "(no suffix) for numbered PNG frames")
    if out.is_dir():
        foreign = [p.name for p in out.iterdir() if not FRAME_FILE.fullmatch(p.name)]
        if foreign:
            raise ClipError(f"{out} holds files other than numbered frames (e.g. {sorted(foreign)[0]}); "
                            "refusing to replace it: choose a new folder")


def to_uint8(frames: Tensor) -> np.ndarray:
    """N x 3 x H x W in [0, 1] -> N x H x W x 3 uint8 (rounded, as ``save_image``)."""
    return (frames.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def sibling(out: Path, tag: str) -> Path:
    """A hidden, unique name beside ``out`` (same directory: the final rename is atomic), suffix kept.
    Not ``tempfile``: its 0600/0700 modes would stay on the finished clip."""
    return out.with_name(f".{out.stem}.{tag}-{uuid.uuid4().hex[:12]}{out.suffix}")


class _VideoSink:
    def __init__(self, out: Path, fps: Fraction, width: int, height: int) -> None:
        codec = encoder_for(out)
        self.out, self.tmp = out, sibling(out, "partial")
        self.container = av.open(str(self.tmp), mode="w", format=CONTAINERS[out.suffix.lower()])
        self.stream = self.container.add_stream(codec, rate=fps)
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"
        if codec not in ("libx264",):
            self.stream.bit_rate = max(1_000_000, int(width * height * float(fps) * BITS_PER_PIXEL))
        self.stream.options = ENCODER_OPTIONS.get(codec, {})
        self.count = 0

    def add(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        if h % 2 or w % 2:  # yuv420p: repeat the last row/column (see the module docstring)
            image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = self.count
        self.count += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def finish(self) -> None:
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        replace(self.tmp, self.out)

    def discard(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - the partial is removed either way
            pass
        self.tmp.unlink(missing_ok=True)


class _FramesSink:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.tmp = sibling(out, "partial")
        self.tmp.mkdir()
        self.count = 0

    def add(self, image: np.ndarray) -> None:
        self.count += 1
        Image.fromarray(image).save(self.tmp / FRAME_NAME.format(self.count), "PNG")

    def finish(self) -> None:
        old = None
        if self.out.exists():  # an earlier frames folder (check_clip_output): swapped out, then deleted
            old = sibling(self.out, "old")
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        fsync_dir(self.out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class ClipWriter:
    """Writes a clip to ``out`` at ``fps``: a video file by its suffix (``VIDEO_SUFFIXES``), else a folder of
    ``frame_000001.png``...; atomically (module docstring). A context manager: leaving it normally finishes
    the clip, an exception (KeyboardInterrupt included) removes the partial one.
    """

    def __init__(self, out: str | Path, fps: float | Fraction) -> None:
        self.out = Path(out)
        check_clip_output(self.out)
        self.fps = as_fps(fps)
        self.count = 0
        self._shape: tuple[int, int] | None = None
        self._sink: _VideoSink | _FramesSink | None = None

    def write(self, frames: Tensor) -> None:
        """Append frames: 3 x H x W or N x 3 x H x W in [0, 1], all of one size."""
        if frames.dim() == 3:
            frames = frames.unsqueeze(0)
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be N x 3 x H x W, got shape {tuple(frames.shape)}")
        shape = (int(frames.shape[2]), int(frames.shape[3]))
        if self._shape is None:
            self._shape = shape
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._sink = (_VideoSink(self.out, self.fps, shape[1], shape[0]) if is_video_file(self.out)
                          else _FramesSink(self.out))
        elif shape != self._shape:
            raise ClipError(f"{self.out}: frame {self.count + 1} is {shape[1]}x{shape[0]}, the clip's frames are "
                            f"{self._shape[1]}x{self._shape[0]}")
        assert self._sink is not None
        for image in to_uint8(frames):
            self._sink.add(image)
            self.count += 1

    def close(self) -> Path:
        """Finish the clip and move it into place; a clip without frames is an error (nothing is written)."""
        if self._sink is None:
            raise ClipError(f"{self.out}: no frames to write")
        try:
            self._sink.finish()
        except BaseException:
            self._sink.discard()
            raise
        return self.out

    def abort(self) -> None:
        """Remove what was written so far (the output name is left as it was)."""
        if self._sink is not None:
            self._sink.discard()

    def __enter__(self) -> ClipWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_clip(out: str | Path, frames: Tensor | Iterable[Tensor], fps: float | Fraction) -> Path:
    """Write ``frames`` (T x 3 x H x W, or an iterable of frames or batches) to ``out`` (see ``ClipWriter``)."""
    with ClipWriter(out, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.out
