"""``distst bench data``: the WebDataset streaming loader vs a plain folder-of-JPEGs loader.

Both decode the same JPEGs (the folder copy is extracted from the shards) with the same training
transform, batch size and worker count; the first ``warmup`` batches (worker start, shuffle buffer
fill) are not timed. Rates are images per second of the timed batches.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from ..data.bundled import CONTENT

HELP = "WebDataset streaming loader vs a folder-of-JPEGs DataLoader on the same images (images/s)"
DEFAULT_SHARDS = CONTENT


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", default=DEFAULT_SHARDS, help=f"shard pattern to read (default {DEFAULT_SHARDS})")
    p.add_argument("--batches", type=int, default=100, help="timed batches per loader")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for both loaders")


def _images_per_s(batches: Iterable, count: int, warmup: int) -> tuple[float, float]:
    """(images/s, seconds) over ``count`` batches after ``warmup`` untimed ones."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    images = 0
    started = time.perf_counter()
    for _ in range(count):
        images += len(next(iterator))
    seconds = time.perf_counter() - started
    if hasattr(iterator, "close"):
        iterator.close()  # a generator over a DataLoader: stop its workers now, not at garbage collection
    return images / seconds, seconds


def export_jpegs(pattern: str, folder: Path) -> list[Path]:
    """Every image of the shards as ``folder/<key>.jpg`` (the folder baseline's input)."""
    from ..data.loader import expand_shards
    from ..data.manifest import read_shard_samples
    from ..data.transforms import sample_image

    files = []
    for index, url in enumerate(expand_shards(pattern)):
        for sample in read_shard_samples(url):
            path = folder / f"{index:06d}-{sample['__key__']}.jpg"
            path.write_bytes(sample_image(sample))
            files.append(path)
    return files


def folder_batches(files: list[Path], crop: int, batch_size: int, workers: int, flip: bool = False) -> Iterable:
    """The baseline: a map-style Dataset over JPEG files, random sampling with replacement, DataLoader."""
    import numpy as np
    from torch.utils.data import DataLoader, Dataset, RandomSampler

    from ..data.loader import _worker_init
    from ..data.transforms import to_tensor, train_view

    class JpegFiles(Dataset):
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, index: int) -> np.ndarray:
            return train_view(files[index].read_bytes(), crop, random.Random(index), flip)[0]

    sampler = RandomSampler(range(len(files)), replacement=True, num_samples=1 << 31)
    return DataLoader(JpegFiles(), batch_size=batch_size, sampler=sampler, num_workers=workers,
                      worker_init_fn=_worker_init, drop_last=True, collate_fn=to_tensor)


def compare_loaders(shards: str, batches: int, warmup: int, batch_size: int, crop: int, workers: int) -> dict[str, dict]:
    from ..config import DataConfig
    from ..data.loader import image_batches

    cfg = DataConfig(content=shards, style=shards, crop=crop, batch_size=batch_size, workers=workers, shuffle_buffer=100)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="distst-bench-") as tmp:
        files = export_jpegs(shards, Path(tmp))
        loaders = {"webdataset": lambda: image_batches(shards, cfg),
                   "folder": lambda: folder_batches(files, crop, batch_size, workers)}
        for name, make_loader in loaders.items():  # one at a time, so they do not compete for the cores
            rate, seconds = _images_per_s(make_loader(), batches, warmup)
            results[name] = {"images_per_s": rate, "seconds": seconds, "images": batches * batch_size}
    results["ratio"] = {"webdataset_over_folder": results["webdataset"]["images_per_s"] / results["folder"]["images_per_s"]}
    return results


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    results = compare_loaders(args.shards, args.batches, args.warmup, args.batch_size, args.crop, args.workers)
    table = Table(title=f"data loaders: {args.shards}, crop {args.crop}, batch {args.batch_size}, "
                        f"{args.workers} workers, {args.batches} timed batches")
    for column in ("loader", "images", "seconds", "images/s"):
        table.add_column(column, justify="left" if column == "loader" else "right")
    for name in ("webdataset", "folder"):
        row = results[name]
        table.add_row(name, str(row["images"]), f"{row['seconds']:.2f}", f"{row['images_per_s']:.1f}")
    ratio = results["ratio"]["webdataset_over_folder"]
    table.add_row("ratio webdataset/folder", "", "", f"{ratio:.2f}x", style="bold")
    Console().print(table)
    return 0
