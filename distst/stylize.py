"""Stylising image files with a model: what ``distst stylize`` and the demo run.

One content image must be usable (an ``ImageError`` says why not); in a directory, unusable images
(truncated, not images, too small or too large for the model) are skipped and counted instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from .errors import DiststError
from .images import SAVE_FORMATS, ImageError, batches_by_size, list_images, load_image, save_image
from .models import DiststModel


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


def output_path(out: Path, content: Path, style: Path, single: bool) -> Path:
    return out if single else out / f"{content.stem}_stylized_{style.stem}.png"


def _usable_contents(paths: list[Path], size: int, model: DiststModel, single: bool,
                     skipped: list[ImageError]) -> Iterator[tuple[Path, Tensor]]:
    for path in paths:
        try:
            yield path, load_image(path, size, model.input_multiple, model.min_size)
        except ImageError as err:
            if single:
                raise
            skipped.append(err)


@torch.no_grad()
def stylize_files(
    model: DiststModel,
    content: str | Path,
    style: str | Path,
    out: str | Path,
    alpha: float = 1.0,
    content_size: int = 512,
    style_size: int = 512,
    batch_size: int = 4,
    device: str = "cpu",
) -> StylizeResult:
    """Stylise one content image or a directory of them with one style image.

    ``out`` is the output file for one content image (its suffix picks the format) or a directory that
    receives PNGs. Unusable images of a directory are skipped and listed in the result.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    contents = list_images(content)
    single = Path(content).is_file()
    check_output(out, single)
    style_path = Path(style)
    if not style_path.is_file():
        raise FileNotFoundError(f"style image {style_path} does not exist")
    style_image = load_image(style_path, style_size, model.input_multiple, model.min_size).unsqueeze(0).to(device)
    model = model.to(device).eval()
    result = StylizeResult()
    loaded = _usable_contents(contents, content_size, model, single, result.skipped)
    with tqdm(total=len(contents), desc="stylize", unit="img", disable=len(contents) < 4) as bar:
        for batch in batches_by_size(loaded, batch_size):
            images = torch.stack([t for _, t in batch]).to(device)
            stylized = model(images, style_image.expand(len(batch), -1, -1, -1), alpha=alpha)
            for (path, tensor), image in zip(batch, stylized, strict=True):
                h, w = tensor.shape[-2:]
                result.written.append(save_image(image[:, :h, :w], output_path(Path(out), path, style_path, single)))
            bar.update(len(batch))
    return result
