"""One input image -> one shard sample (runs in the build's worker processes).

Decode, convert to 8-bit RGB (``distst.images.to_rgb``, shared with ``distst stylize``: grayscale, CMYK,
palette, alpha and 16-bit inputs), shrink the shorter side to ``resize``, re-encode as JPEG. Images whose shorter side is below ``resize`` are flagged ``small`` and
kept at their own size, or enlarged only when ``upscale`` is asked for (COCO's 640x480 at the reference's
512, say): never silently.
Anything that cannot be decoded becomes a ``Skipped`` record with a short reason instead of an exception.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field

from PIL import Image

from ..images import to_rgb, unreadable_reason
from .sources import SourceItem


@dataclass(frozen=True)
class EncodeOptions:
    resize: int = 512
    quality: int = 95
    upscale: bool = False


@dataclass
class Encoded:
    index: int
    key: str
    jpg: bytes
    meta: dict
    converted_from: str | None = None  # the input's PIL mode when it was not RGB
    small: bool = False

    def sample(self) -> dict:
        return {"__key__": self.key, "jpg": self.jpg, "json": json.dumps(self.meta, sort_keys=True).encode()}


@dataclass
class Skipped:
    index: int
    source: str
    reason: str
    detail: str = field(default="")


def sample_key(index: int) -> str:
    """Keys are the input's position in the sorted listing: unique, stable, free of dots."""
    return f"{index:09d}"


def target_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(w, h) with the shorter side ``shorter`` and the aspect ratio kept."""
    if width <= height:
        return shorter, max(1, round(height * shorter / width))
    return max(1, round(width * shorter / height)), shorter


def _detail(err: Exception) -> str:
    # PIL names the BytesIO object with its address; drop it so manifests are reproducible.
    return re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(err).__name__}: {err}")


def _decode_resized(data: bytes, options: EncodeOptions) -> tuple[Image.Image, int, int, str, bool]:
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        mode = img.mode
        small = min(width, height) < options.resize
        size = (width, height) if small and not options.upscale else target_size(width, height, options.resize)
        img.draft(None, size)  # JPEG: let the decoder downscale by 1/2..1/8 while staying >= size (fast)
        img.load()
        rgb = to_rgb(img)
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)  # box-reduce big non-JPEGs first
    return rgb, width, height, mode, small


def encode_item(index: int, item: SourceItem, options: EncodeOptions) -> Encoded | Skipped:
    """The shard sample for ``item`` or why it was skipped; never raises for a bad image."""
    try:
        data = item.read()
        if not data:
            return Skipped(index, item.rel, "empty file")
        rgb, width, height, mode, small = _decode_resized(data, options)
        buffer = io.BytesIO()
        rgb.save(buffer, "JPEG", quality=options.quality)
    except Exception as err:  # noqa: BLE001 - one bad file must never end the build
        return Skipped(index, item.rel, unreadable_reason(err), _detail(err))
    meta = {"source": item.rel, "width": width, "height": height}
    if item.label is not None:
        meta["style"] = item.label
    return Encoded(index, sample_key(index), buffer.getvalue(), meta,
                   converted_from=None if mode == "RGB" else mode, small=small)
