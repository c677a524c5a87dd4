"""One process's infinite, shuffled sample stream from WebDataset shards, with a position that can be saved.

``SampleStream`` draws shards with replacement, reads this process's share of each shard's samples and
passes them through a shuffle buffer. Every random choice comes from generators it owns, so ``state()``
(the generators, the shard being read and how far, and *which* samples sit in the shuffle buffer, as
(shard, position) pairs) lets ``restore`` continue exactly where it was: a resumed stream yields the same
samples, in the same order, as one that was never stopped. The buffer's samples are re-read from their
shards (tar reads, no image decoding) rather than stored, which keeps a position a few kilobytes.

A run resumed with another number of processes re-deals what the old processes had read but not yet used
(``pending``: their buffers' samples and the unread rest of their current shards) among the new ones
(``inherit``): nothing read is lost, nothing is yielded twice by the re-split.
"""

from __future__ import annotations

import hashlib
import random
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import webdataset as wds

from ..errors import DataError

# Streams are infinite: after this many consecutive shard reads without a sample for this process, or
# this many consecutive undecodable samples, give up with an error rather than spin forever.
GIVE_UP_SHARDS = 1_000
GIVE_UP_SAMPLES = 20_000
# The shuffle buffer starts yielding once it holds this many samples, then grows by one per sample yielded
# up to its size (as WebDataset's shuffle does): the first batches come fast, later ones are well mixed.
STARTUP_BUFFER = 100


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable values; stable across processes (unlike ``hash`` of a str)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


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


class Health:
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


def read_shard(url: str, handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """Every sample of one shard, in tar order (WebDataset's reader, so positions are the same everywhere)."""
    return iter(wds.tarfile_to_samples(handler=handler)(iter([{"url": url}])))


#: A pending single sample: (shard URL, position in the shard).
PendingSample = tuple[str, int]
#: A pending rest of a shard: (shard URL, first unread position, share parts, share index): the positions from
#: there on that are ``index`` modulo ``parts``.
PendingSpan = tuple[str, int, int, int]


def _random_state(rng: random.Random) -> list[int]:
    return list(rng.getstate()[1])  # a plain list of ints: loads with torch.load(weights_only=True)


def _set_random_state(rng: random.Random, state: Sequence[int]) -> None:
    rng.setstate((3, tuple(state), None))


class SampleStream:
    """Infinite samples for one process: resampled shards -> this process's share of each -> shuffle buffer."""

    def __init__(self, urls: Sequence[str], share: Share, seed: int, buffer_size: int, health: Health):
        self.urls, self.share, self.buffer_size, self.health = tuple(urls), share, buffer_size, health
        # Shards of samples inherited from other processes (a resume with another world size) that are not in
        # ``urls``: shard index ``len(urls) + i`` is ``extra_urls[i]``. Never drawn from.
        self.extra_urls: list[str] = []
        self.spans: list[tuple[int, int, int, int]] = []  # inherited shard rests, read before new shards are drawn
        self.reading = share  # the share of the shard being read: ``share``, or an inherited rest's
        self.shard_rng = random.Random(derive_seed(seed, "shards"))
        self.shuffle_rng = random.Random(derive_seed(seed, "shuffle"))
        self.buffer: list[tuple[int, int, dict]] = []  # (shard index, position in shard, sample)
        self.shard = -1  # index into urls of the shard being read; -1 before the first draw
        self.read = 0  # samples of that shard read so far (all positions, this process's or not)
        self.kept = 0  # of those, this process's
        self.barren = 0  # shard reads in a row that gave this process nothing
        self.reader: Iterator[dict] | None = None
        self.restoring = False  # re-reads during restore() must not count corrupt data a second time

    # --- reading ---

    def _on_error(self, exn: Exception) -> bool:
        if self.restoring and not isinstance(exn, FileNotFoundError):
            return True
        return self.health(exn)

    def _url(self, shard: int) -> str:
        return self.urls[shard] if shard < len(self.urls) else self.extra_urls[shard - len(self.urls)]

    def _draw_shard(self) -> None:
        if self.spans:  # an inherited shard rest first: positions from ``start`` of the old process's share
            self.shard, start, parts, index = self.spans.pop(0)
            self.reading, self.kept = Share(index, parts), 0
            self.reader = self._skip(read_shard(self._url(self.shard), self._on_error), start)
            self.read = start
            return
        self.reading = self.share
        if self.shard >= 0:
            self.barren = 0 if self.kept else self.barren + 1
            if self.barren >= GIVE_UP_SHARDS:
                raise DataError(
                    f"{self.barren} shard reads in a row gave this process no sample (last {self.urls[self.shard]}, "
                    f"share {self.share.index} of {self.share.parts}): shards unreadable, or too few samples "
                    "for the ranks x workers; build more shards or use fewer ranks/workers")
        self.shard = self.shard_rng.randrange(len(self.urls))
        self.read = self.kept = 0
        self.reader = read_shard(self.urls[self.shard], self._on_error)

    def _next_own(self) -> tuple[int, int, dict]:
        """The next sample of this process's share, drawing new shards as they run out."""
        while True:
            if self.reader is None:
                self._draw_shard()
            sample = next(self.reader, None)
            if sample is None:
                self.reader = None
                continue
            position = self.read
            self.read += 1
            if position % self.reading.parts == self.reading.index:
                self.kept += 1
                return self.shard, position, sample

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self.buffer_size == 0:
            return self.buffer.pop(0)[2] if self.buffer else self._next_own()[2]
        if len(self.buffer) < self.buffer_size:  # an inherited, oversized buffer shrinks back to its size
            self.buffer.append(self._next_own())
        if len(self.buffer) < self.buffer_size:
            self.buffer.append(self._next_own())
        while len(self.buffer) < min(self.buffer_size, STARTUP_BUFFER):
            self.buffer.append(self._next_own())
        pick = self.shuffle_rng.randrange(len(self.buffer))
        self.buffer[pick], self.buffer[-1] = self.buffer[-1], self.buffer[pick]
        return self.buffer.pop()[2]

    # --- position ---

    def state(self) -> dict[str, Any]:
        """Where the stream is: its generators, its place in the current shard, the buffer's samples by location."""
        held = torch.tensor([[shard, position] for shard, position, _ in self.buffer], dtype=torch.int64)
        return {"shard_rng": _random_state(self.shard_rng), "shuffle_rng": _random_state(self.shuffle_rng),
                "shard": self.shard, "read": self.read, "kept": self.kept, "barren": self.barren,
                "buffer": held.reshape(-1, 2), "extra_urls": list(self.extra_urls),
                "spans": torch.tensor(self.spans, dtype=torch.int64).reshape(-1, 4),
                "reading": [self.reading.index, self.reading.parts]}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state()``: re-read the buffered samples and skip to the reader's place (no decoding)."""
        _set_random_state(self.shard_rng, state["shard_rng"])
        _set_random_state(self.shuffle_rng, state["shuffle_rng"])
        self.shard, self.read, self.kept, self.barren = state["shard"], state["read"], state["kept"], state["barren"]
        self.extra_urls = list(state.get("extra_urls", []))  # positions saved before re-splits lack these three
        self.spans = [tuple(int(v) for v in span) for span in state.get("spans", torch.zeros(0, 4)).tolist()]
        self.reading = Share(*state.get("reading", (self.share.index, self.share.parts)))
        wanted = [(int(s), int(p)) for s, p in state["buffer"].tolist()]
        found: dict[tuple[int, int], dict] = {}
        self.restoring = True
        try:
            self.reader = self._reopen_current(set(wanted), found) if self.shard >= 0 else None
            self._reread(set(wanted) - found.keys(), found)
        finally:
            self.restoring = False
        missing = [spot for spot in wanted if spot not in found]
        if missing:
            warnings.warn(f"{len(missing)} buffered samples could not be re-read (shards changed since the "
                          "checkpoint?); the stream continues without them", RuntimeWarning, stacklevel=2)
        self.buffer = [(s, p, found[(s, p)]) for s, p in wanted if (s, p) in found]

    def _reopen_current(self, wanted: set[tuple[int, int]], found: dict[tuple[int, int], dict]) -> Iterator[dict]:
        """The current shard's reader, advanced past the samples already read; collects buffered ones on the way."""
        reader = read_shard(self._url(self.shard), self._on_error)
        for position in range(self.read):
            sample = next(reader, None)
            if sample is None:
                break
            if (self.shard, position) in wanted:
                found[(self.shard, position)] = sample
        return reader

    def _reread(self, wanted: set[tuple[int, int]], found: dict[tuple[int, int], dict]) -> None:
        """Read each shard that holds wanted samples once, up to the last one wanted."""
        by_shard: dict[int, set[int]] = defaultdict(set)
        for shard, position in wanted:
            by_shard[shard].add(position)
        for shard, positions in sorted(by_shard.items()):
            last = max(positions)
            for position, sample in enumerate(read_shard(self._url(shard), self._on_error)):
                if position in positions:
                    found[(shard, position)] = sample
                if position >= last:
                    break

    @staticmethod
    def _skip(reader: Iterator[dict], count: int) -> Iterator[dict]:
        for _ in range(count):
            if next(reader, None) is None:
                break
        return reader

    # --- re-splitting across another number of processes ---

    def pending(self, state: dict[str, Any]) -> tuple[list[PendingSample], list[PendingSpan]]:
        """What the stream at ``state`` (of this stream's shards and share) had read but not yet yielded: its
        buffer's samples and the unread rest of its current shard (and any inherited rests not yet begun)."""
        urls = [*self.urls, *state.get("extra_urls", [])]
        reading = state.get("reading", (self.share.index, self.share.parts))
        singles = [(urls[int(s)], int(p)) for s, p in state["buffer"].tolist()]
        spans = [(urls[int(state["shard"])], int(state["read"]), int(reading[1]), int(reading[0]))] \
            if int(state["shard"]) >= 0 else []
        spans += [(urls[u], start, parts, index) for u, start, parts, index in
                  state.get("spans", torch.zeros(0, 4)).tolist()]
        return singles, spans

    def inherit(self, singles: Sequence[PendingSample], spans: Sequence[PendingSpan]) -> None:
        """Take over other processes' pending samples (a fresh stream, before it yields): the single ones go into
        the shuffle buffer (re-read from their shards, undecoded), the shard rests are read before new shards."""
        def index_of(url: str) -> int:
            if url in self.urls:
                return self.urls.index(url)
            if url not in self.extra_urls:
                self.extra_urls.append(url)
            return len(self.urls) + self.extra_urls.index(url)

        wanted = [(index_of(url), position) for url, position in singles]
        self.spans = [(index_of(url), start, parts, index) for url, start, parts, index in spans]
        found: dict[tuple[int, int], dict] = {}
        self.restoring = True
        try:
            self._reread(set(wanted), found)
        finally:
            self.restoring = False
        self.buffer = [(s, p, found[(s, p)]) for s, p in wanted if (s, p) in found]
