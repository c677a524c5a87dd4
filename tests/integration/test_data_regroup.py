"""A resume with another number of processes re-deals the data stream: what the old processes had read but not
used (their shuffle buffers, the rest of their current shards) goes to exactly one new process, which yields it;
nothing consumed before is yielded again by the re-split; the result is the same on every re-run."""

from __future__ import annotations

import io
from collections import Counter
from itertools import islice

import pytest
import torch
from data_fixtures import data_config, write_shards

from distst.data import TrainStream
from distst.data.samples import SampleStream, Share


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("shards")
    return {"content": write_shards(folder, "content", shards=3, per_shard=9),
            "style": write_shards(folder, "style", shards=2, per_shard=7)}


def _stored(position: dict) -> dict:
    """As a checkpoint stores it: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(position, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _consume(stream: TrainStream, batches: int) -> list[str]:
    keys: list[str] = []
    for _content, _style, content_keys, _style_keys in islice(stream, batches):
        keys += content_keys
    return keys


def _pending_keys(stream: TrainStream, position: dict, workers: int, name: str = "content") -> Counter[str]:
    """The keys of the samples a saved rank position had read but not yet yielded (buffers + shard rests)."""
    urls = stream.urls[name]
    found: Counter[str] = Counter()
    for index in range(workers):
        state = position["workers"].get(index)
        if state is None:
            continue
        node, worker = Share(stream.rank, stream.world_size), Share(index, workers)
        urls_here, node_rest = node.deal(list(urls))
        urls_here, worker_rest = worker.deal(urls_here)
        samples = SampleStream(urls_here, node_rest.within(worker_rest), 0, 0, None)  # type: ignore[arg-type]
        singles, spans = samples.pending(state[name])
        found.update(_keys_at(singles, spans))
    return found


def _keys_at(singles: list, spans: list) -> list[str]:
    from distst.data.samples import read_shard

    keys = []
    for url, position in singles:
        keys.append(next(s for p, s in enumerate(read_shard(url, lambda e: True)) if p == position)["__key__"])
    for url, start, parts, index in spans:
        keys += [s["__key__"] for p, s in enumerate(read_shard(url, lambda e: True)) if p >= start and p % parts == index]
    return keys


@pytest.mark.parametrize(("before", "after", "workers"), [(2, 1, 0), (1, 2, 0), (2, 1, 2)])
def test_a_resplit_hands_every_pending_sample_to_exactly_one_new_process(shards: dict[str, str], before: int,
                                                                         after: int, workers: int) -> None:
    cfg = data_config(shards["content"], shards["style"], batch_size=2, shuffle_buffer=6, workers=workers)
    old = [TrainStream(cfg, rank=r, world_size=before, return_keys=True) for r in range(before)]
    for stream in old:
        _consume(stream, 3)
    positions = [_stored(stream.position()) for stream in old]
    pending = sum((_pending_keys(s, p, max(workers, 1)) for s, p in zip(old, positions, strict=True)), Counter())
    assert pending  # (a key may be pending twice: shards are drawn with replacement, as in an unbroken stream)

    new = [TrainStream(cfg, rank=r, world_size=after, return_keys=True, position={"regroup": positions})
           for r in range(after)]
    starts = [stream.start for stream in new]
    handed = Counter()
    for start in starts:
        for _worker, by_stream in start["inherit"].items():
            handed.update(_keys_at(*by_stream["content"]))
    assert handed == pending  # every pending sample, each time it is pending, to exactly one new process

    # The new processes yield all of it (mixed by their shuffle buffers with their fresh shard draws).
    yielded = Counter()
    for stream in new:
        yielded.update(_consume(stream, 40))
    assert all(yielded[key] >= 1 for key in pending)
    # The same re-split on every re-run.
    again = [TrainStream(cfg, rank=r, world_size=after, return_keys=True, position={"regroup": positions})
             for r in range(after)]
    assert [_consume(s, 4) for s in again] == [_consume(
        TrainStream(cfg, rank=r, world_size=after, return_keys=True, position={"regroup": positions}), 4)
        for r in range(after)]


def test_a_position_saved_after_a_resplit_continues_it_exactly(shards: dict[str, str]) -> None:
    cfg = data_config(shards["content"], shards["style"], batch_size=2, shuffle_buffer=6, workers=0)
    old = [TrainStream(cfg, rank=r, world_size=2, return_keys=True) for r in range(2)]
    for stream in old:
        _consume(stream, 2)
    positions = [_stored(stream.position()) for stream in old]
    whole = TrainStream(cfg, rank=0, world_size=1, return_keys=True, position={"regroup": positions})
    straight = _consume(whole, 8)
    first = TrainStream(cfg, rank=0, world_size=1, return_keys=True, position={"regroup": positions})
    head = _consume(first, 3)
    resumed = TrainStream(cfg, rank=0, world_size=1, return_keys=True, position=_stored(first.position()))
    assert head + _consume(resumed, 5) == straight


def test_positions_of_other_data_settings_restart_the_stream_with_a_warning(shards: dict[str, str]) -> None:
    cfg = data_config(shards["content"], shards["style"], batch_size=2, shuffle_buffer=6, workers=0)
    old = TrainStream(cfg, rank=0, world_size=2, return_keys=True)
    _consume(old, 1)
    other = data_config(shards["content"], shards["style"], batch_size=2, shuffle_buffer=6, workers=0, seed=99)
    with pytest.warns(RuntimeWarning, match="other data settings"):
        stream = TrainStream(other, rank=0, world_size=1, return_keys=True,
                             position={"regroup": [_stored(old.position()), _stored(old.position())]})
    assert stream.start is None
