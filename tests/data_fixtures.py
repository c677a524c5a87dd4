"""Tiny generated inputs for the data tests: image folders with every kind of bad file, and test shards."""

from __future__ import annotations

import io
import itertools
import zlib
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from distst.config import DataConfig

RESIZE = 32  # --resize of the folder builds; every good image is larger, the tiny one smaller


def _pixels(rng: np.random.Generator, height: int, width: int, channels: int = 3) -> np.ndarray:
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def make_image_folder(root: Path) -> dict:
    """30 files in a WikiArt-like tree (Genre/name.ext) plus top-level oddities; returns what to expect.

    23 ordinary RGB JPEG/PNG images, 1 truncated JPEG, 1 text file named .jpg, 1 grayscale PNG,
    1 RGBA PNG, 1 CMYK JPEG, 1 16-bit grayscale PNG, 1 image smaller than RESIZE.
    """
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(23):
        genre = root / ("Cubism" if i % 2 else "Impressionism")
        genre.mkdir(exist_ok=True)
        array = _pixels(rng, 40 + i, 48)
        if i % 3:
            (genre / f"artist_{i:02d}.jpg").write_bytes(jpeg_bytes(array))
        else:
            Image.fromarray(array).save(genre / f"artist_{i:02d}.png")
    whole = jpeg_bytes(_pixels(rng, 48, 48))
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "notes.jpg").write_text("this is not an image")
    Image.fromarray(_pixels(rng, 40, 44, 1)).save(root / "gray.png")
    Image.fromarray(_pixels(rng, 40, 44, 4)).save(root / "rgba.png")
    Image.fromarray(_pixels(rng, 40, 44)).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray((rng.random((40, 44)) * 65535).astype(np.uint16)).save(root / "deep16.png")
    Image.fromarray(_pixels(rng, 16, 20)).save(root / "tiny.jpg")
    return {
        "inputs": 30, "samples": 28,
        "skipped": {"truncated.jpg": "truncated", "notes.jpg": "not an image"},
        "converted": {"CMYK": 1, "I;16": 1, "L": 1, "RGBA": 1},
        "small": 1,
    }


def write_shards(folder: Path, name: str, shards: int, per_shard: int, size: tuple[int, int] = (40, 48),
                 bad_keys: frozenset[str] = frozenset(), small_keys: frozenset[str] = frozenset()) -> str:
    """``folder/NAME-00000k.tar`` with keys ``NAME<k>x<i>`` (random pixels); returns the brace pattern.

    Keys in ``bad_keys`` get bytes that are not a JPEG; keys in ``small_keys`` get a 12 x 12 image.
    """
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        with wds.TarWriter(str(folder / f"{name}-{shard:06d}.tar"), encoder=False, mtime=0) as tar:
            for i in range(per_shard):
                key = f"{name}{shard}x{i:03d}"
                jpg = jpeg_bytes(_pixels(rng, *((12, 12) if key in small_keys else size)))
                tar.write({"__key__": key, "jpg": b"garbage, not a jpeg" if key in bad_keys else jpg,
                           "json": b"{}"})
    return f"{folder}/{name}-{{000000..{shards - 1:06d}}}.tar"


def data_config(content: str, style: str, **overrides) -> DataConfig:
    settings = {"crop": 32, "batch_size": 4, "workers": 0, "shuffle_buffer": 16, "seed": 0} | overrides
    return DataConfig(content=content, style=style, **settings)


def gloo_rank_keys(rank: int, world_size: int, init_file: str, cfg: dict, batches: int, out: str) -> None:
    """Body of one spawned rank: join a gloo group, let TrainStream find its rank, record the keys it reads."""
    import json

    import torch.distributed as dist

    from distst.data import TrainStream

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        stream = TrainStream(DataConfig(**cfg), return_keys=True)  # rank/world size from torch.distributed
        seen = {"rank": stream.rank, "world_size": stream.world_size, "content": [], "style": []}
        for _, _, content_keys, style_keys in itertools.islice(stream, batches):
            seen["content"] += content_keys
            seen["style"] += style_keys
        Path(out, f"rank{rank}.json").write_text(json.dumps(seen))
        dist.barrier()
    finally:
        dist.destroy_process_group()
