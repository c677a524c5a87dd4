"""Streaming loader: infinite, reproducible, resumable (content, style) batches from WebDataset shards.

Each stream (content, style) of each process is a ``samples.SampleStream`` (shards drawn with replacement ->
this process's share of their samples -> shuffle buffer) followed by decode + random crop/flip -> batches.
Shards are dealt out first across ranks, then across the DataLoader workers of a rank; where there are too few
shards to deal, every process of that level reads the same shards and keeps every n-th sample of each (a
disjoint, balanced share). So no two processes ever read the same samples.

Reproducibility: every random choice (shard picks, shuffle buffer, crops, flips) draws from generators
seeded by (``data.seed``, epoch, rank, world size, worker, workers, stream), and the DataLoader hands out
worker batches in a fixed round-robin order. Rebuilding ``TrainStream`` with the same arguments therefore
yields the same batches, bit for bit. A run has one stream from start to end (nothing depends on how often it
checkpoints): every batch carries its worker's position, ``TrainStream.position()`` records where the
consumed batches end, and ``TrainStream(..., position=p)`` continues from there without decoding what came
before (it re-reads the shuffle buffer's samples from their shards, undecoded).

A resume with another number of processes passes every old rank's position (``{"regroup": [...]}``, see
``distst.train.elastic``): what the old processes had read but not used is merged and dealt out again among the
new processes and their workers (``SampleStream.pending`` / ``inherit``), and the new streams are seeded from
the old positions, so the re-split neither loses nor repeats what was read, and is the same on every re-run.
"""

from __future__ import annotations

import os
import random
import warnings
from collections import Counter
from collections.abc import Iterator
from itertools import islice
from typing import Any, NamedTuple

import numpy as np
import torch
import webdataset as wds
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from ..config import DataConfig
from ..errors import DataError
from .samples import GIVE_UP_SAMPLES, GIVE_UP_SHARDS, Health, SampleStream, Share, derive_seed
from .sources import expand_pattern
from .transforms import eval_view, sample_image, to_tensor, train_view

__all__ = ["GIVE_UP_SAMPLES", "GIVE_UP_SHARDS", "Share", "TrainStream", "derive_seed", "eval_pairs", "expand_shards",
           "first_images", "image_batches"]


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


# --- per-process streams ------------------------------------------------------------------------------

class _Batch(NamedTuple):
    images: Tensor
    keys: list[str]
    small: int  # images in this batch that were smaller than the crop


def _collate(views: list[tuple[np.ndarray, str, bool]]) -> _Batch:
    return _Batch(to_tensor([v[0] for v in views]), [v[1] for v in views], sum(v[2] for v in views))


class _StreamBatches:
    """One stream's (content or style) batches as seen by one process, with a position it can save and restore."""

    def __init__(self, name: str, urls: tuple[str, ...], cfg: DataConfig, seed: int, node: Share, worker: Share,
                 counts: Counter[str]):
        urls_here, node_rest = node.deal(list(urls))
        urls_here, worker_rest = worker.deal(urls_here)
        self.name, self.cfg, self.counts = name, cfg, counts
        self.health = Health(name, counts)
        self.samples = SampleStream(urls_here, node_rest.within(worker_rest), seed, cfg.shuffle_buffer, self.health)
        self.crops = random.Random(derive_seed(seed, "augment"))

    def next_batch(self) -> _Batch:
        views = []
        while len(views) < self.cfg.batch_size:
            sample = next(self.samples)
            self.counts[f"decoded_{self.name}"] += 1
            try:
                # Decoded here: only the image member, odd modes converted to RGB as the shard builder does.
                image, small = train_view(sample_image(sample), self.cfg.crop, self.crops, self.cfg.flip)
            except Exception as exn:  # noqa: BLE001 - PIL raises many types for bad bytes; Health decides
                self.health(exn)
                continue
            self.health.ok()
            views.append((image, sample["__key__"], small))
        return _collate(views)

    def state(self) -> dict[str, Any]:
        return {**self.samples.state(), "crops": list(self.crops.getstate()[1])}

    def restore(self, state: dict[str, Any]) -> None:
        self.samples.restore(state)
        self.crops.setstate((3, tuple(state["crops"]), None))


class _ZippedBatches(IterableDataset):
    """Runs in each DataLoader worker: zips its streams' batches, carrying counter deltas and its position along.

    ``positions`` (by worker) are where earlier workers of the same stream stopped; ``rotation`` makes loader
    worker ``i`` play worker ``(i + rotation) % workers``, so that the DataLoader's round-robin, which always
    starts at its worker 0, continues with the worker whose batch is due.
    """

    def __init__(self, streams: dict[str, tuple[str, ...]], cfg: DataConfig, epoch: int, rank: int, world_size: int,
                 positions: dict[int, dict] | None = None, rotation: int = 0, inherited: dict[int, dict] | None = None):
        super().__init__()
        self.streams, self.cfg, self.epoch, self.rank, self.world_size = streams, cfg, epoch, rank, world_size
        self.positions, self.rotation, self.inherited = positions or {}, rotation, inherited or {}

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        info = get_worker_info()
        workers = info.num_workers if info else 1
        index = ((info.id if info else 0) + self.rotation) % workers
        worker, node = Share(index, workers), Share(self.rank, self.world_size)
        counts: Counter[str] = Counter()
        streams = {name: _StreamBatches(name, urls, self.cfg, derive_seed(self.cfg.seed, self.epoch, node, worker, name),
                                        node, worker, counts)
                   for name, urls in self.streams.items()}
        saved = self.positions.get(index)
        if saved is not None:
            for name, stream in streams.items():
                stream.restore(saved[name])
        elif index in self.inherited:  # a fresh worker after a re-split: other processes' pending samples first
            for name, stream in streams.items():
                stream.samples.inherit(*self.inherited[index][name])
        while True:  # the streams are infinite
            batches = [stream.next_batch() for stream in streams.values()]
            for name, batch in zip(streams, batches, strict=True):
                counts[f"small_{name}"] += batch.small
            delta = dict(counts)  # samples decoded and corrupt ones met since the last batch, small images in it
            counts.clear()
            position = {name: stream.state() for name, stream in streams.items()}
            yield (*(batch.images for batch in batches), *(batch.keys for batch in batches), delta, index, position)


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
    """Shared by ``TrainStream`` and ``image_batches``: the DataLoader over ``_ZippedBatches``, and its position."""

    def __init__(self, patterns: dict[str, str], cfg: DataConfig, rank: int | None, world_size: int | None, epoch: int,
                 position: dict[str, Any] | None = None):
        self.cfg = cfg
        self.epoch = epoch
        self.rank, self.world_size = _placement(rank, world_size)
        self.urls = {name: tuple(expand_shards(pattern)) for name, pattern in patterns.items()}
        self.start = self._usable(position)
        if self.start is not None:
            self.epoch = self.start["epoch"]  # the seeds of workers that had not yet yielded a batch
        self._begin()

    def _fingerprint(self, full_urls: bool = False, placement: tuple[int, int] | None = None) -> int:
        """What a saved position depends on: another value here makes it meaningless. The shards by file name:
        a run resumed after its shards moved (same content: the resume check compares checksums) continues its
        stream; ``full_urls``: the fingerprint of positions saved before that."""
        urls = {k: v if full_urls else tuple(u.rsplit("/", 1)[-1] for u in v) for k, v in self.urls.items()}
        rank, world_size = placement or (self.rank, self.world_size)
        return derive_seed("position", self.cfg.seed, rank, world_size, self.cfg.workers, sorted(urls.items()))

    def _usable(self, position: dict[str, Any] | None) -> dict[str, Any] | None:
        if position is not None and "regroup" in position:
            return self._regrouped(position["regroup"])
        if position is None or position.get("fits") in (self._fingerprint(), self._fingerprint(full_urls=True)):
            return position
        warnings.warn("the saved data position was made with other data settings (seed, shards, workers or "
                      "world size); the data stream restarts, re-seeded", RuntimeWarning, stacklevel=3)
        self.epoch = derive_seed(position.get("epoch"), position.get("batches"))  # not a replay of the first batches
        return None

    def _regrouped(self, old: list[dict[str, Any]]) -> dict[str, Any] | None:
        """This rank's start after a resume from ``len(old)`` processes: their pending samples re-dealt."""
        placements = [(rank, len(old)) for rank in range(len(old))]
        if any(p.get("fits") not in (self._fingerprint(placement=at), self._fingerprint(True, placement=at))
               for p, at in zip(old, placements, strict=True)):
            return self._usable({"fits": None, "epoch": old[0].get("epoch"), "batches": old[0].get("batches")})
        workers = max(self.cfg.workers, 1)
        pending: dict[str, tuple[list, list]] = {name: ([], []) for name in self.urls}
        for (rank, old_world), position in zip(placements, old, strict=True):
            node = Share(rank, old_world)
            for index in range(workers):
                saved = position.get("workers", {}).get(index) or position.get("inherit", {}).get(index)
                for name, urls in self.urls.items():
                    if saved is None:  # a worker that never yielded had read nothing
                        continue
                    if index in position.get("workers", {}):
                        singles, spans = _StreamBatches(name, urls, self.cfg, 0, node, Share(index, workers),
                                                        Counter()).samples.pending(saved[name])
                    else:  # inherited by a worker that had not started: passed on as it was
                        singles, spans = saved[name]
                    pending[name][0].extend(singles)
                    pending[name][1].extend(spans)
        # Dealt round-robin over the new processes (rank-major, then worker), the same on every re-run.
        parts, here = self.world_size * workers, [self.rank * workers + w for w in range(workers)]
        inherit = {w: {name: (singles[g::parts], spans[g::parts]) for name, (singles, spans) in pending.items()}
                   for w, g in enumerate(here)}
        counters: Counter[str] = Counter()
        for position in old[self.rank::self.world_size]:
            counters.update(position.get("counters", {}))
        epoch = derive_seed("regroup", len(old), self.world_size, old[0].get("epoch"), old[0].get("batches"))
        return {"fits": self._fingerprint(), "epoch": epoch, "batches": 0, "next_worker": 0, "workers": {},
                "counters": dict(counters), "inherit": inherit}

    def _begin(self) -> None:
        """Reset the consumed-batch bookkeeping to the starting position (iterating starts from there)."""
        start = self.start or {}
        self.counters = dict.fromkeys(self.counter_names(), 0) | dict(start.get("counters", {}))
        self._worker_positions: dict[int, dict] = dict(start.get("workers", {}))
        self._next_worker = int(start.get("next_worker", 0))
        self._batches = int(start.get("batches", 0))
        self._inherit: dict[int, dict] = dict(start.get("inherit", {}))

    def position(self) -> dict[str, Any]:
        """Where the batches consumed so far end: restore with ``position=``, on the same rank, to continue.

        Per worker its streams' states after its last consumed batch (prefetched batches are not counted),
        which worker is due next, and the counters. A few kilobytes plus 16 bytes per shuffle-buffer sample.
        """
        return {"fits": self._fingerprint(), "epoch": self.epoch, "batches": self._batches,
                "next_worker": self._next_worker, "workers": dict(self._worker_positions),
                "counters": dict(self.counters),
                # What a re-split gave workers that have not yielded since: kept until they have.
                "inherit": {w: v for w, v in self._inherit.items() if w not in self._worker_positions}}

    def _raw(self) -> Iterator[tuple[Any, ...]]:
        self._begin()
        dataset = _ZippedBatches(self.urls, self.cfg, self.epoch, self.rank, self.world_size,
                                 dict(self._worker_positions), self._next_worker, dict(self._inherit))
        workers = self.cfg.workers
        # The DataLoader draws its workers' base seed from this generator, not from torch's global RNG: a resumed
        # run starts its loader mid-run, and a draw there would shift every later training draw (noise losses).
        generator = torch.Generator().manual_seed(derive_seed("loader", self.cfg.seed, self.epoch, self.rank))
        loader = wds.WebLoader(dataset, batch_size=None, num_workers=workers, worker_init_fn=_worker_init,
                               prefetch_factor=2 if workers else None, pin_memory=torch.cuda.is_available(),
                               generator=generator)
        for *batch, delta, worker, position in loader:
            for name, value in delta.items():
                self.counters[name] = self.counters.get(name, 0) + value
            self._worker_positions[worker] = position
            self._next_worker = (worker + 1) % max(workers, 1)
            self._batches += 1
            yield tuple(batch)

    def counter_names(self) -> tuple[str, ...]:
        return tuple(f"{kind}_{name}" for kind in ("corrupt", "small", "decoded") for name in self.urls)


class TrainStream(_BatchSource):
    """Infinite (content, style) training batches for one rank: B x 3 x crop x crop float32 in [0, 1].

    ``rank``/``world_size`` default to torch.distributed's when initialised, else env RANK/WORLD_SIZE,
    else 0/1. Iterating starts the stream from ``position`` (a ``position()`` saved earlier), or from its
    beginning, so a given (data.seed, epoch, rank, world_size, data.workers, position) always yields the same
    batches. ``counters`` sums, over all workers, the images decoded, the corrupt samples skipped and the small
    images enlarged for the batches yielded so far (and, after a restore, before it).
    ``return_keys``: also yield the two lists of sample keys (for tests and debugging).
    """

    def __init__(self, cfg: DataConfig, rank: int | None = None, world_size: int | None = None, epoch: int = 0,
                 *, return_keys: bool = False, position: dict[str, Any] | None = None):
        super().__init__({"content": cfg.content, "style": cfg.style}, cfg, rank, world_size, epoch, position)
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
