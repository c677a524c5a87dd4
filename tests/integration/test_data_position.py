"""The data stream's saved position: exact continuation without re-decoding, independent of checkpoint_every."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pytest
import torch
from data_fixtures import data_config, write_shards
from helpers import tiny_config

from distst.data import TrainStream, loader
from distst.track import read_metrics
from distst.train import train


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("shards")
    return {"content": write_shards(folder, "content", shards=3, per_shard=7),
            "style": write_shards(folder, "style", shards=2, per_shard=5)}


@pytest.fixture()
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the images the loader decodes in this process (data.workers=0 decodes in-process)."""
    calls = [0]
    real = loader.train_view

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(loader, "train_view", counting)
    return calls


def _same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2:] == y[2:]
                                    for x, y in zip(a, b, strict=True))


def _through_a_file(position: dict) -> dict:
    """As a checkpoint stores it: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(position, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on a 2-core machine
@pytest.mark.parametrize(("workers", "shuffle_buffer"), [(0, 6), (2, 6), (3, 0)])
def test_a_stream_restored_from_its_position_continues_exactly(shards: dict[str, str], workers: int,
                                                               shuffle_buffer: int) -> None:
    cfg = data_config(shards["content"], shards["style"], batch_size=3, workers=workers,
                      shuffle_buffer=shuffle_buffer, flip=True)
    stream = TrainStream(cfg, return_keys=True)
    batches = iter(stream)
    list(itertools.islice(batches, 7))  # 7 batches: the next is due from a worker other than the first
    position = _through_a_file(stream.position())
    expected = list(itertools.islice(batches, 8))
    resumed = TrainStream(cfg, return_keys=True, position=position)
    assert _same(list(itertools.islice(resumed, 8)), expected)
    assert resumed.counters == stream.counters  # counted over the whole stream, not since the restore


def test_a_restore_decodes_only_the_new_batches(shards: dict[str, str], decodes: list[int]) -> None:
    cfg = data_config(shards["content"], shards["style"], batch_size=2, shuffle_buffer=6)
    stream = TrainStream(cfg)
    list(itertools.islice(stream, 40))
    assert decodes[0] == 40 * 2 * 2  # content and style
    position = stream.position()
    decodes[0] = 0
    list(itertools.islice(TrainStream(cfg, position=position), 1))
    assert decodes[0] == 2 * 2  # one batch of each stream: none of the 40 before it is decoded again


def test_a_position_for_other_data_settings_restarts_the_stream_with_a_warning(shards: dict[str, str]) -> None:
    cfg = data_config(shards["content"], shards["style"], workers=0)
    stream = TrainStream(cfg, return_keys=True)
    first = list(itertools.islice(stream, 3))
    other = data_config(shards["content"], shards["style"], workers=1)
    with pytest.warns(RuntimeWarning, match="other data settings"):
        restarted = TrainStream(other, return_keys=True, position=stream.position())
    assert [b[2] for b in itertools.islice(restarted, 3)] != [b[2] for b in first]  # re-seeded, not a replay


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


@pytest.mark.slow
def test_checkpoint_every_changes_no_batch_and_a_resume_decodes_only_new_batches(tmp_path: Path,
                                                                                 decodes: list[int]) -> None:
    settings = {"train__deterministic": "true", "deepspeed__gradient_accumulation_steps": 2}
    every2, every3, resumed = tmp_path / "every2", tmp_path / "every3", tmp_path / "resumed"
    train(tiny_config(every2, train__steps=5, train__checkpoint_every=2, **settings), every2)
    train(tiny_config(every3, train__steps=5, train__checkpoint_every=3, **settings), every3)
    assert _losses(every2) == _losses(every3)  # the data order is not tied to the checkpoint interval

    train(tiny_config(resumed, train__steps=3, train__checkpoint_every=100, **settings), resumed)  # saved at 3
    decodes[0] = 0
    train(tiny_config(resumed, train__steps=5, train__checkpoint_every=100, **settings), resumed)
    assert decodes[0] == 2 * 2 * 2 * 2  # steps 4, 5 x 2 micro-batches x batch 2 x (content, style): no replay
    assert _losses(resumed) == _losses(every2)
    rows = [r for r in read_metrics(resumed / "metrics.jsonl") if "data/decoded_content" in r]
    assert [r["data/decoded_content"] for r in rows] == [step * 2 * 2 for step in range(1, 6)]
