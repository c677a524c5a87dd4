"""Stylising image files and clips with a model: what ``distst stylize`` and the demo run.

One content image must be usable (an ``ImageError`` says why not); in a directory, unusable images
(truncated, not images, too small or too large for the model) are skipped and counted instead. A clip (a video
file or a folder of numbered frames) is streamed in batches, the style side computed once, and written
atomically (``distst.video.io``): any unusable frame is an error, and nothing is left under the output name.

A model that translates a content image alone (CycleGAN: its registry record's ``inputs`` is "content") takes no
style image (``style=None``); a style-transfer model needs one.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from .errors import DiststError
from .export.stylizers import FrameStylizer, TorchStylizer
from .images import SAVE_FORMATS, ImageError, batches_by_size, list_images, load_image, save_image
from .models import DiststModel
from .video.io import ClipReader, ClipWriter, check_clip_output


class OutputError(DiststError, ValueError):
    """``out`` does not fit the content: a file name for one image, a directory for a directory."""


@dataclass
class StylizeResult:
    written: list[Path] = field(default_factory=list)
    skipped: list[ImageError] = field(default_factory=list)  # directory mode only

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(err.reason for err in self.skipped).items()))


def check_output(out: str | Path, single: bool) -> None:
    """Refuse an ``out`` that would be misread: a directory (or no image suffix) for one image, a file for many."""
    out = Path(out)
    if single:
        if out.is_dir():
            raise OutputError(f"--out {out} is a directory; for one content image give a file name such as "
                              f"{out / 'stylized.png'}")
        if out.suffix.lower() not in SAVE_FORMATS:
            raise OutputError(f"--out {out}: give an image file name ending in {', '.join(SAVE_FORMATS)} "
                              "(a directory only when --content is a directory)")
    elif out.is_file() or out.suffix.lower() in SAVE_FORMATS:
        raise OutputError(f"--out {out} must be a directory when --content is a directory")


def output_path(out: Path, content: Path, style: Path | None, single: bool) -> Path:
    if single:
        return out
    return out / (f"{content.stem}_translated.png" if style is None else f"{content.stem}_stylized_{style.stem}.png")


def _usable_contents(paths: list[Path], size: int, stylizer: FrameStylizer, single: bool,
                     skipped: list[ImageError]) -> Iterator[tuple[Path, Tensor]]:
    for path in paths:
        try:
            yield path, load_image(path, size, stylizer.multiple, stylizer.min_size)
        except ImageError as err:
            if single:
                raise
            skipped.append(err)


def as_stylizer(model: DiststModel | FrameStylizer, alpha: float = 1.0,
               device: str | torch.device = "cpu") -> FrameStylizer:
    """A model as a ``TorchStylizer`` at ``alpha`` on ``device``; a stylizer as it is (alpha 1 only)."""
    if not isinstance(model, FrameStylizer):
        return TorchStylizer(model, alpha, device)
    if alpha != 1.0:
        raise ValueError(f"alpha {alpha} needs a torch model; a {type(model).__name__} stylises at alpha 1")
    return model


def _load_style(style: str | Path | None, size: int, stylizer: FrameStylizer) -> Path | None:
    """The style image given to ``stylizer`` (None for one that takes none: a style there is a mistake)."""
    if not stylizer.takes_style:
        if style is not None:
            raise ValueError("this model translates a content image alone: it takes no style image")
        return None
    if style is None:
        raise ValueError("a style-transfer model needs a style image")
    path = Path(style)
    if not path.is_file():
        raise FileNotFoundError(f"style image {path} does not exist")
    stylizer.set_style(load_image(path, size, stylizer.multiple, stylizer.min_size).unsqueeze(0))
    return path


@torch.no_grad()
def stylize_files(
    model: DiststModel | FrameStylizer,
    content: str | Path,
    style: str | Path | None,
    out: str | Path,
    alpha: float = 1.0,
    content_size: int = 512,
    style_size: int = 512,
    batch_size: int = 4,
    device: str = "cpu",
) -> StylizeResult:
    """Stylise one content image or a directory of them with one style image (None: a translation model's).

    ``model`` is a distst model (run at ``alpha`` on ``device``) or a ``FrameStylizer`` (exported graphs).
    ``out`` is the output file for one content image (its suffix picks the format) or a directory that
    receives PNGs. Unusable images of a directory are skipped and listed in the result.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    contents = list_images(content)
    single = Path(content).is_file()
    check_output(out, single)
    stylizer = as_stylizer(model, alpha, device)
    style_path = _load_style(style, style_size, stylizer)
    result = StylizeResult()
    loaded = _usable_contents(contents, content_size, stylizer, single, result.skipped)
    with tqdm(total=len(contents), desc="stylize", unit="img", disable=len(contents) < 4) as bar:
        for batch in batches_by_size(loaded, batch_size):
            stylized = stylizer(torch.stack([t for _, t in batch]))
            for (path, _), image in zip(batch, stylized, strict=True):
                result.written.append(save_image(image, output_path(Path(out), path, style_path, single)))
            bar.update(len(batch))
    return result


@dataclass(frozen=True)
class ClipResult:
    """A stylised clip: where it went, its frame count, and the seconds its frames took (decode, stylise,
    encode; not the model's or the style's set-up)."""

    out: Path
    frames: int
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def _stacked(frames: Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    batch: list[Tensor] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


@torch.no_grad()
def stylize_clip(
    stylizer: FrameStylizer,
    content: str | Path,
    style: str | Path | None,
    out: str | Path,
    content_size: int = 512,
    style_size: int = 512,
    batch_size: int = 4,
    fps: float | None = None,
) -> ClipResult:
    """Stylise a clip (a video file, or a folder of numbered frames at ``fps``, default 25) with one style.

    Frames are streamed in batches of ``batch_size``; ``out`` is a video file by its suffix (same rate and
    frame count as the clip) or a folder of numbered PNGs. Written atomically: on any error nothing is left
    under ``out``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    check_clip_output(out, content)
    with ClipReader(content, content_size, stylizer.multiple, stylizer.min_size, fps) as reader:
        _load_style(style, style_size, stylizer)
        start = time.perf_counter()
        with ClipWriter(out, reader.info.fps) as writer, \
                tqdm(total=len(reader) or None, desc="stylize", unit="frame") as bar:
            for batch in _stacked(reader, batch_size):
                writer.write(stylizer(batch).cpu())
                bar.update(len(batch))
    return ClipResult(writer.out, writer.count, time.perf_counter() - start)
