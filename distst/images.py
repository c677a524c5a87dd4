"""Image files <-> tensors in [0, 1], resized as the reference test scripts do.

``to_rgb`` is the one conversion of odd modes (16-bit, float, alpha, palette, CMYK) to 8-bit RGB: the
shard builder, the streaming loader and ``distst stylize`` all go through it, so a 16-bit PNG looks the same
everywhere (a plain ``convert("RGB")`` clips 16-bit values and whitewashes the image).

``pil_to_tensor``, ``resize``, ``center_crop`` and ``image_grid`` are torchvision's tensor transforms, written here
because importing torchvision costs every distst process about a second (it pulls in ``torch._dynamo``), for
four small functions; they equal torchvision's outputs exactly (tests/unit/test_images_transforms.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# What ``save_image`` writes, by the output's suffix.
SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP",
                ".tif": "TIFF", ".tiff": "TIFF"}
JPEG_QUALITY = 95
# Largest side a loaded image may have after resizing: a 8192 px side already needs gigabytes of VGG
# activations, and a typo such as --content-size 100000 must fail before anything is allocated.
MAX_SIDE = 8192

ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
BACKGROUND = (255, 255, 255)  # transparent pixels are shown over white, as viewers do


class ImageError(DataError):
    """An image file that cannot be used; ``reason`` is a short label for skip counts ("truncated", ...)."""

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))
        self.path = Path(path)
        self.reason = reason


# --- decoding -----------------------------------------------------------------------------------------

def _to_8bit_gray(img: Image.Image) -> Image.Image:
    values = np.asarray(img, dtype=np.float64)
    if img.mode in SIXTEEN_BIT_MODES or values.max(initial=0) > 255:
        values = values / 257.0  # 65535 -> 255
    elif img.mode == "F" and values.max(initial=0) <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB; alpha is composited over white, 16-bit/float gray is rescaled rather than clipped."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in SIXTEEN_BIT_MODES | {"I", "F"}:
        img = _to_8bit_gray(img)
    if img.mode in ALPHA_MODES:
        canvas = Image.new("RGBA", img.size, (*BACKGROUND, 255))
        canvas.alpha_composite(img.convert("RGBA"))
        img = canvas
    return img.convert("RGB")


def unreadable_reason(err: Exception) -> str:
    """A short label for why PIL could not decode a file."""
    if isinstance(err, UnidentifiedImageError):
        return "not an image"
    if isinstance(err, Image.DecompressionBombError):
        return "too large"
    if isinstance(err, OSError) and "truncated" in str(err):
        return "truncated"
    return "unreadable"


# --- files --------------------------------------------------------------------------------------------

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


def resized_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """(h, w) after ``resize(t, size)``: shorter side ``size``, longer side truncated (0 keeps the size)."""
    if not size:
        return height, width
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def pil_to_tensor(img: Image.Image) -> Tensor:
    """An 8-bit RGB image as 3 x H x W float32 in [0, 1] (torchvision's ``to_tensor``)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div(255)


def resize(tensor: Tensor, size: int | Sequence[int]) -> Tensor:
    """Bilinear, antialiased resize of ... x H x W floats (torchvision's tensor ``resize``): an int resizes the
    shorter side to it (the longer side truncated), a pair gives (h, w)."""
    h, w = tensor.shape[-2:]
    out = resized_shape(w, h, size) if isinstance(size, int) else tuple(size)
    if tuple(out) == (h, w):
        return tensor
    batch = tensor.reshape(-1, *tensor.shape[-3:]) if tensor.dim() >= 3 else tensor[None, None]
    resized = torch.nn.functional.interpolate(batch, size=list(out), mode="bilinear", align_corners=False,
                                              antialias=True)
    return resized.reshape(*tensor.shape[:-2], *out)


def center_crop(tensor: Tensor, size: Sequence[int]) -> Tensor:
    """The central (h, w) of ... x H x W (torchvision's ``center_crop`` of a smaller size: its rounding)."""
    h, w = tensor.shape[-2:]
    top, left = int(round((h - size[0]) / 2.0)), int(round((w - size[1]) / 2.0))
    return tensor[..., top:top + size[0], left:left + size[1]]


def image_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 0.0) -> Tensor:
    """B x C x H x W as one C x H' x W' grid, ``nrow`` a row (torchvision's ``make_grid``, same layout)."""
    count, channels, height, width = images.shape
    if count == 1:  # as make_grid: one image is returned as it is
        return images[0]
    columns = min(nrow, count)
    rows = math.ceil(count / columns)
    cell_h, cell_w = height + padding, width + padding
    grid = images.new_full((channels, cell_h * rows + padding, cell_w * columns + padding), pad_value)
    for k in range(count):
        y, x = divmod(k, columns)
        grid[:, y * cell_h + padding:(y + 1) * cell_h, x * cell_w + padding:(x + 1) * cell_w] = images[k]
    return grid


def cropped_shape(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(h, w) after the center crop of ``load_image`` to multiples of ``multiple``."""
    if multiple <= 1:
        return height, width
    return max(multiple, height // multiple * multiple), max(multiple, width // multiple * multiple)


def _check_planned_shape(path: Path, width: int, height: int, size: int, multiple: int, min_size: int) -> None:
    """Refuse sizes a model cannot take, from the header alone (before decoding or allocating)."""
    h, w = cropped_shape(*resized_shape(width, height, size), multiple)
    if max(h, w) > MAX_SIDE:
        raise ImageError(path, "too large", f"{w}x{h} after resizing; the limit is {MAX_SIDE} px a side")
    if min(h, w) < min_size:
        raise ImageError(path, "too small", f"{w}x{h}; the model needs at least {min_size}x{min_size}: "
                                            "resize it, e.g. with --content-size/--style-size")


def load_image(path: str | Path, size: int = 0, multiple: int = 1, min_size: int = 1) -> Tensor:
    """3 x H x W in [0, 1]: shorter side resized to ``size`` (0 keeps it), then center-cropped to a multiple.

    Raises ``ImageError`` for files that are not images, truncated, or whose size after resizing is below
    ``min_size`` or above ``MAX_SIDE`` (checked from the header, before decoding).
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ImageError(path, "empty file")
    try:
        with Image.open(path) as img:
            _check_planned_shape(path, *img.size, size, multiple, min_size)
            img.load()
            tensor = pil_to_tensor(to_rgb(img))
    except ImageError:
        raise
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as err:  # PIL's decode failures
        raise ImageError(path, unreadable_reason(err), str(err)) from err
    if size:
        tensor = resize(tensor, size)
    h, w = tensor.shape[-2:]
    if multiple > 1 and (h % multiple or w % multiple):
        tensor = center_crop(tensor, cropped_shape(h, w, multiple))
    return tensor.clamp(0, 1)


def save_image(tensor: Tensor, path: str | Path) -> Path:
    """Write a 3 x H x W tensor in [0, 1] as an 8-bit image, in the format of the suffix (PNG by default)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (tensor.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image_format = SAVE_FORMATS.get(path.suffix.lower(), "PNG")
    options = {"quality": JPEG_QUALITY} if image_format in ("JPEG", "WEBP") else {}
    Image.fromarray(array).save(path, image_format, **options)
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
