"""Streaming loader: infinite, reproducible (content, style) batches from WebDataset shards.

Each stream (content, style) is a WebDataset pipeline per process: ``ResampledShards`` -> tar samples ->
shuffle buffer -> decode + random crop/flip -> batches. Shards are dealt out first across ranks, then
across the DataLoader workers of a rank; where there are too few shards to deal, every process of that
level reads the same shards and keeps every n-th sample of each (a disjoint, balanced share).
So no two processes ever read the same samples.

Reproducibility: every random choice (shard picks, shuffle buffer, crops, flips) draws from generators
seeded by (``data.seed``, epoch, rank, world size, worker, workers, stream), and the DataLoader hands out
worker batches in a fixed round-robin order. Rebuilding ``TrainStream`` with the same arguments therefore
yields the same batches, bit for bit; a trainer resumes mid-epoch by rebuilding and skipping k batches.
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, NamedTuple

import numpy as np
import torch
import webdataset as wds
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from ..config import DataConfig
from .errors import DataError
from .sources import expand_pattern
from .transforms import eval_view, sample_image, to_tensor, train_view

# Streams are infinite: after this many consecutive shard reads without a sample for this process, or
# this many consecutive undecodable samples, give up with an error rather than spin forever.
GIVE_UP_SHARDS = 1_000
GIVE_UP_SAMPLES = 20_000


# --- shards -------------------------------------------------------------------------------------------

def expand_shards(pattern: str) -> list[str]:
    """Brace-expanded shard URLs; local files must exist and hold a sample (remote ones are checked when opened)."""
    urls = expand_pattern(pattern)
    if not urls:
        raise DataError(f"shard pattern {pattern!r} names no shards")
    for url in urls:
        path = url.removeprefix("file:")
        if "://" in path or path.startswith("pipe:"):
            continue
        if not os.path.isfile(path):
            raise FileNotFoundError(f"shard {path} does not exist (from {pattern!r})")
        if _empty_tar(path):
            raise DataError(f"shard {path} holds no samples (from {pattern!r}); rebuild it with `distst shards build`")
    return urls


def _empty_tar(path: str) -> bool:
    """A tar without members: no bytes, or an end-of-archive (zero) block first. Reads one 512-byte block."""
    with open(path, "rb") as f:
        first = f.read(512)
    return not first.strip(b"\0")


@dataclass(frozen=True)
class Share:
    """A process's part of a level (ranks, or one rank's workers): ``index`` of ``parts``."""

    index: int
    parts: int

    def deal(self, urls: list[str]) -> tuple[list[str], Share]:
        """This part's shards, and the share of each shard's samples it still has to leave to the others.

        With at least ``parts`` shards each part gets whole shards (and keeps all their samples);
        with fewer, every part reads all of them and keeps every ``parts``-th sample.
        """
        if len(urls) >= self.parts:
            # What wds.split_by_node/split_by_worker do, but on the finite list *before* resampling
            # (they split the resampled stream, which would let ranks draw the same shards), and
            # with the rank given explicitly rather than read from the environment.
            return urls[self.index::self.parts], Share(0, 1)
        return urls, self

    def within(self, inner: Share) -> Share:
        """The combined sample share of an outer level (ranks) and an inner one (workers)."""
        return Share(self.index * inner.parts + inner.index, self.parts * inner.parts)


def _shard_samples(shards: Iterator[dict], handler: Callable[[Exception], bool], share: Share) -> Iterator[dict]:
    """Samples of each drawn shard, keeping positions ``share.index`` mod ``share.parts``.

    WebDataset's tar reader runs once per shard so that sample positions are known (the same in every
    process, so the shares are disjoint and balanced); a run of shards that yield nothing to this
    process (its share is empty, or the shards are unreadable) ends in an error instead of a silent hang.
    """
    read = wds.tarfile_to_samples(handler=handler)
    barren = 0
    for shard in shards:
        kept = 0
        for position, sample in enumerate(read(iter([shard]))):
            if position % share.parts == share.index:
                kept += 1
                yield sample
        barren = 0 if kept else barren + 1
        if barren >= GIVE_UP_SHARDS:
            raise DataError(f"{barren} shard reads in a row gave this process no sample (last {shard['url']}, "
                               f"share {share.index} of {share.parts}): shards unreadable, or too few samples "
                               "for the ranks x workers; build more shards or use fewer ranks/workers")


# --- per-process streams ------------------------------------------------------------------------------

def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable values; stable across processes (unlike ``hash`` of a str)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


class _Health:
    """WebDataset exception handler: counts and skips corrupt samples, re-raises missing shards."""

    def __init__(self, stream: str, counts: Counter[str]):
        self.stream = stream
        self.counts = counts
        self.misses = 0

    def __call__(self, exn: Exception) -> bool:
        if isinstance(exn, FileNotFoundError):
            raise FileNotFoundError(f"{self.stream} shard missing: {exn}") from exn
        self.counts[f"corrupt_{self.stream}"] += 1
        self.misses += 1
        warnings.warn(f"skipping corrupt {self.stream} data: {exn}", RuntimeWarning, stacklevel=2)
        if self.misses > GIVE_UP_SAMPLES:
            raise RuntimeError(f"{self.misses} consecutive corrupt {self.stream} samples; last: {exn}") from exn
        return True

    def ok(self) -> None:
        self.misses = 0


class _Batch(NamedTuple):
    images: Tensor
    keys: list[str]
    small: int  # images in this batch that were smaller than the crop (counted here, not when decoded,
    #             because wds.batched decodes one sample ahead of the batch it yields)


def _collate(views: list[tuple[np.ndarray, str, bool]]) -> _Batch:
    return _Batch(to_tensor([v[0] for v in views]), [v[1] for v in views], sum(v[2] for v in views))


def _no_worker_seed() -> int:
    return 0  # our seed already encodes rank and worker; ResampledShards would add env-derived ones


@dataclass(frozen=True)
class _Stream:
    """One infinite stream of batches (content or style) as seen by one process."""

    name: str
    urls: tuple[str, ...]
    cfg: DataConfig
    seed: int  # already specific to (data.seed, epoch, rank, world size, worker, workers, stream)

    def batches(self, node: Share, worker: Share, counts: Counter[str]) -> Iterator[_Batch]:
        urls, node_rest = node.deal(list(self.urls))
        urls, worker_rest = worker.deal(urls)
        share = node_rest.within(worker_rest)
        health = _Health(self.name, counts)
        crops = random.Random(derive_seed(self.seed, "augment"))

        # Decoded here, not with wds.decode("pil"): one step decodes only the image member, converts odd
        # modes to RGB as the builder does, and flags small images for the counters.
        def view(sample: dict) -> tuple[np.ndarray, str, bool]:
            image, small = train_view(sample_image(sample), self.cfg.crop, crops, self.cfg.flip)
            health.ok()
            return image, sample["__key__"], small

        stages: list[Any] = [
            wds.ResampledShards(urls, seed=derive_seed(self.seed, "shards") & 0x7FFFFFFF,
                                worker_seed=_no_worker_seed, deterministic=True),
            lambda shards: _shard_samples(shards, health, share),
        ]
        if self.cfg.shuffle_buffer > 0:
            stages.append(wds.shuffle(self.cfg.shuffle_buffer, initial=min(self.cfg.shuffle_buffer, 100),
                                      rng=random.Random(derive_seed(self.seed, "shuffle"))))
        stages += [wds.map(view, handler=health), wds.batched(self.cfg.batch_size, collation_fn=_collate, partial=False)]
        return iter(wds.DataPipeline(*stages))


class _ZippedBatches(IterableDataset):
    """Runs in each DataLoader worker: zips its streams' batches and carries the counter deltas along."""

    def __init__(self, streams: dict[str, tuple[str, ...]], cfg: DataConfig, epoch: int, rank: int, world_size: int):
        super().__init__()
        self.streams, self.cfg, self.epoch, self.rank, self.world_size = streams, cfg, epoch, rank, world_size

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        info = get_worker_info()
        worker = Share(info.id, info.num_workers) if info else Share(0, 1)
        node = Share(self.rank, self.world_size)
        counts: Counter[str] = Counter()
        iterators = [
            _Stream(name, urls, self.cfg,
                    derive_seed(self.cfg.seed, self.epoch, node, worker, name)).batches(node, worker, counts)
            for name, urls in self.streams.items()
        ]
        for batches in zip(*iterators, strict=True):  # the streams are infinite
            for name, batch in zip(self.streams, batches, strict=True):
                counts[f"small_{name}"] += batch.small
            delta = dict(counts)  # corrupt samples met since the last batch, small images in this one
            counts.clear()
            yield (*(batch.images for batch in batches), *(batch.keys for batch in batches), delta)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode with PIL; torch threads would only oversubscribe the cores


def _placement(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            found = dist.get_rank(), dist.get_world_size()
        else:
            found = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    return rank, world_size


class _BatchSource:
    """Shared by ``TrainStream`` and ``image_batches``: the DataLoader over ``_ZippedBatches``."""

    def __init__(self, patterns: dict[str, str], cfg: DataConfig, rank: int | None, world_size: int | None, epoch: int):
        self.cfg = cfg
        self.epoch = epoch
        self.rank, self.world_size = _placement(rank, world_size)
        self.urls = {name: tuple(expand_shards(pattern)) for name, pattern in patterns.items()}
        self.counters = dict.fromkeys(self.counter_names(), 0)

    def _raw(self) -> Iterator[tuple[Any, ...]]:
        dataset = _ZippedBatches(self.urls, self.cfg, self.epoch, self.rank, self.world_size)
        workers = self.cfg.workers
        loader = wds.WebLoader(dataset, batch_size=None, num_workers=workers, worker_init_fn=_worker_init,
                               prefetch_factor=2 if workers else None, pin_memory=torch.cuda.is_available())
        self.counters = dict.fromkeys(self.counter_names(), 0)
        for *batch, delta in loader:
            for name, value in delta.items():
                self.counters[name] = self.counters.get(name, 0) + value
            yield tuple(batch)

    def counter_names(self) -> tuple[str, ...]:
        return tuple(f"{kind}_{name}" for kind in ("corrupt", "small") for name in self.urls)


class TrainStream(_BatchSource):
    """Infinite (content, style) training batches for one rank: B x 3 x crop x crop float32 in [0, 1].

    ``rank``/``world_size`` default to torch.distributed's when initialised, else env RANK/WORLD_SIZE,
    else 0/1. Iterating starts the stream from its beginning, so a given (data.seed, epoch, rank,
    world_size, data.workers) always yields the same batches. ``counters`` sums, over all workers, the
    corrupt samples skipped and the small images enlarged for the batches yielded so far.
    ``return_keys``: also yield the two lists of sample keys (for tests and debugging).
    """

    def __init__(self, cfg: DataConfig, rank: int | None = None, world_size: int | None = None, epoch: int = 0,
                 *, return_keys: bool = False):
        super().__init__({"content": cfg.content, "style": cfg.style}, cfg, rank, world_size, epoch)
        self.return_keys = return_keys

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for content, style, content_keys, style_keys in self._raw():
            yield (content, style, content_keys, style_keys) if self.return_keys else (content, style)


def image_batches(pattern: str, cfg: DataConfig, rank: int = 0, world_size: int = 1,
                  epoch: int = 0) -> Iterator[Tensor]:
    """One infinite stream of training batches from ``pattern`` with ``cfg``'s crop, batch, workers, seed."""
    for images, _keys in _BatchSource({"content": pattern}, cfg, rank, world_size, epoch)._raw():
        yield images


# --- evaluation ---------------------------------------------------------------------------------------

def first_images(pattern: str, count: int, size: int) -> Tensor:
    """The first ``count`` usable images of ``pattern`` in shard order, center-cropped: count x 3 x size x size."""
    urls = expand_shards(pattern)
    dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False,
                             handler=wds.warn_and_continue)
    views = list(islice(dataset.map(lambda s: eval_view(sample_image(s), size), handler=wds.warn_and_continue), count))
    if len(views) < count:
        raise DataError(f"{pattern} holds only {len(views)} usable images; {count} are needed (data.eval_pairs)")
    return to_tensor(views)


def eval_pairs(cfg: DataConfig) -> tuple[Tensor, Tensor]:
    """The fixed held-out (content, style) pairs: N x 3 x S x S each, N = eval_pairs, S = eval_size or crop."""
    size = cfg.eval_size or cfg.crop
    return (first_images(cfg.eval_content or cfg.content, cfg.eval_pairs, size),
            first_images(cfg.eval_style or cfg.style, cfg.eval_pairs, size))
