"""Stylising image files with a model: what ``distst stylize`` and the demo run."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from .images import batches_by_size, list_images, load_image, save_image
from .models import StyleTransferModel


def output_path(out: Path, content: Path, style: Path, single: bool) -> Path:
    if single and out.suffix.lower() == ".png":
        return out
    return out / f"{content.stem}_stylized_{style.stem}.png"


@torch.no_grad()
def stylize_files(
    model: StyleTransferModel,
    content: str | Path,
    style: str | Path,
    out: str | Path,
    alpha: float = 1.0,
    content_size: int = 512,
    style_size: int = 512,
    batch_size: int = 4,
    device: str = "cpu",
) -> list[Path]:
    """Stylise one content image or a directory of them with one style image; returns the PNGs written."""
    contents = list_images(content)
    style_path = Path(style)
    if not style_path.is_file():
        raise FileNotFoundError(f"style image {style_path} does not exist")
    model = model.to(device).eval()
    multiple = model.input_multiple
    style_image = load_image(style_path, style_size, multiple).unsqueeze(0).to(device)
    loaded = ((p, load_image(p, content_size, multiple)) for p in contents)
    written: list[Path] = []
    single = Path(content).is_file()
    with tqdm(total=len(contents), desc="stylize", unit="img", disable=len(contents) < 4) as bar:
        for batch in batches_by_size(loaded, batch_size):
            images = torch.stack([t for _, t in batch]).to(device)
            result = model(images, style_image.expand(len(batch), -1, -1, -1), alpha=alpha)
            for (path, tensor), image in zip(batch, result, strict=True):
                h, w = tensor.shape[-2:]
                written.append(save_image(image[:, :h, :w], output_path(Path(out), path, style_path, single)))
            bar.update(len(batch))
    return written
