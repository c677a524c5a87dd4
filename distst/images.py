"""Image files <-> tensors in [0, 1], resized as the reference test scripts do."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import functional as TF

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def list_images(path: str | Path) -> list[Path]:
    """The image at ``path``, or every image below a directory (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) below {path}")
        return found
    raise FileNotFoundError(f"{path} does not exist")


def load_image(path: str | Path, size: int = 0, multiple: int = 1) -> Tensor:
    """3 x H x W in [0, 1]: shorter side resized to ``size`` (0 keeps it), then center-cropped to a multiple."""
    with Image.open(path) as img:
        tensor = TF.to_tensor(img.convert("RGB"))
    if size:
        tensor = TF.resize(tensor, size, antialias=True)
    h, w = tensor.shape[-2:]
    if multiple > 1 and (h % multiple or w % multiple):
        tensor = TF.center_crop(tensor, [max(multiple, h // multiple * multiple), max(multiple, w // multiple * multiple)])
    return tensor.clamp(0, 1)


def save_image(tensor: Tensor, path: str | Path) -> Path:
    """Write a 3 x H x W tensor in [0, 1] as an 8-bit PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (tensor.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(array).save(path)
    return path


def batches_by_size(items: Iterable[tuple[Path, Tensor]], batch_size: int) -> Iterator[list[tuple[Path, Tensor]]]:
    """Consecutive same-sized images in batches of at most ``batch_size`` (streams; holds one batch)."""
    batch: list[tuple[Path, Tensor]] = []
    for item in items:
        if batch and (len(batch) == batch_size or item[1].shape != batch[0][1].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch
