"""Sample transforms shared by the streaming loader and the folder baseline of ``distst bench data``.

Views are H x W x 3 uint8 arrays; ``to_tensor`` turns a batch of them into float32 in [0, 1].
Training: random ``crop`` (images already resized at build time; ones smaller than the crop are first
enlarged so their shorter side equals it, and reported as small), optional horizontal flip. Evaluation:
the same enlargement, then a center crop. Randomness comes from an explicit ``random.Random`` so the
loader can make every crop and flip reproducible.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..images import to_rgb
from .encode import target_size

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")  # WebDataset member extensions we read images from


def decode_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return to_rgb(img)


def sample_image(sample: dict) -> bytes:
    """The encoded image of a WebDataset sample (KeyError if it has none)."""
    for field in IMAGE_FIELDS:
        if field in sample:
            return sample[field]
    raise KeyError(f"sample {sample.get('__key__')!r} has no image member ({', '.join(IMAGE_FIELDS)})")


def cover(img: Image.Image, size: int) -> tuple[Image.Image, bool]:
    """Enlarge an image whose shorter side is below ``size`` to exactly ``size``; True if it had to."""
    if min(img.size) >= size:
        return img, False
    return img.resize(target_size(*img.size, size), Image.Resampling.BICUBIC), True


def to_tensor(views: Sequence[np.ndarray]) -> Tensor:
    """N x 3 x H x W float32 in [0, 1] from N H x W x 3 uint8 views.

    One conversion per batch rather than per image: small torch ops are dominated by their overhead
    (and by thread start-up when torch runs several threads, as in the trainer's process).
    """
    batch = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).contiguous()
    return batch.float().div_(255)


def random_crop(img: Image.Image, size: int, rng: random.Random, flip: bool) -> np.ndarray:
    width, height = img.size
    left, top = rng.randint(0, width - size), rng.randint(0, height - size)
    img = img.crop((left, top, left + size, top + size))
    if flip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(img, dtype=np.uint8)


def center_crop(img: Image.Image, size: int) -> np.ndarray:
    width, height = img.size
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def train_view(data: bytes, size: int, rng: random.Random, flip: bool) -> tuple[np.ndarray, bool]:
    """Decoded, covered, randomly cropped (and maybe flipped) size x size x 3 uint8 view; was it small?"""
    img, small = cover(decode_rgb(data), size)
    return random_crop(img, size, rng, flip), small


def eval_view(data: bytes, size: int) -> np.ndarray:
    img, _ = cover(decode_rgb(data), size)
    return center_crop(img, size)
