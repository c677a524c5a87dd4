"""``TrainStream`` / ``eval_pairs``: shapes, disjoint ranks and workers, reproducibility, corrupt and missing data."""

from __future__ import annotations

import io
import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import data_config, write_shards
from helpers import patience
from PIL import Image

from distst.data import TrainStream, eval_pairs
from distst.data.manifest import read_shard_samples


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("shards")
    return {
        "content4": write_shards(folder, "content", shards=4, per_shard=6),
        "style2": write_shards(folder, "style", shards=2, per_shard=6),
        "one": write_shards(folder, "one", shards=1, per_shard=12),
        "bad": write_shards(folder, "bad", shards=2, per_shard=5, bad_keys=frozenset({"bad0x002", "bad1x004"})),
        "small": write_shards(folder, "small", shards=1, per_shard=6, small_keys=frozenset({"small0x002"})),
    }


def _take(stream: TrainStream, batches: int) -> list[tuple]:
    return list(itertools.islice(stream, batches))


def _keys(batches: list[tuple], index: int) -> set[str]:
    return {key for batch in batches for key in batch[index]}


def test_batches_have_the_configured_shape_and_range(shards: dict[str, str]) -> None:
    cfg = data_config(shards["content4"], shards["style2"], crop=24, batch_size=3)
    for content, style in _take(TrainStream(cfg), 4):
        for images in (content, style):
            assert images.shape == (3, 3, 24, 24) and images.dtype == torch.float32
            assert 0.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.1


def test_ranks_of_a_world_of_two_read_disjoint_samples(shards: dict[str, str]) -> None:
    cfg = data_config(shards["content4"], shards["one"])  # content: whole shards per rank; style: one shared shard
    seen = [_take(TrainStream(cfg, rank=r, world_size=2, return_keys=True), 8) for r in range(2)]
    for index, stream in ((2, "content"), (3, "style")):
        first, second = (_keys(batches, index) for batches in seen)
        assert first and second and not first & second, stream
    assert {k[len("content")] for k in _keys(seen[0], 2)} == {"0", "2"}  # shards 0 and 2 of 4 for rank 0
    assert len(_keys(seen[0], 3) | _keys(seen[1], 3)) > 6  # both halves of the shared shard are used


def test_workers_of_a_rank_read_disjoint_samples_and_counters_are_summed(shards: dict[str, str]) -> None:
    cfg = data_config(shards["style2"], shards["small"], workers=2, batch_size=2, shuffle_buffer=4)
    stream = TrainStream(cfg, rank=1, world_size=2, return_keys=True)  # one content shard for rank 1, two workers
    batches = _take(stream, 12)
    by_worker = [_keys(batches[w::2], 2) for w in range(2)]  # the DataLoader alternates between workers
    assert by_worker[0] == {f"style1x{i:03d}" for i in (0, 2, 4)}  # every other sample of the shard
    assert by_worker[1] == {f"style1x{i:03d}" for i in (1, 3, 5)}
    # one style shard for both ranks: rank 1's workers keep positions 2 and 3 (of 4 shares), 2 = the small one
    assert _keys(batches, 3) == {"small0x002", "small0x003"}
    style_small = sum(batch[3].count("small0x002") for batch in batches)
    assert style_small > 0 and stream.counters["small_style"] == style_small  # deltas travel with the batches
    assert stream.counters["small_content"] == 0 and stream.counters["corrupt_content"] == 0


def test_same_seed_and_epoch_reproduce_every_batch(shards: dict[str, str]) -> None:
    cfg = data_config(shards["content4"], shards["style2"], workers=2, flip=True)
    first = _take(TrainStream(cfg, rank=0, world_size=1, epoch=3, return_keys=True), 5)
    second = _take(TrainStream(cfg, rank=0, world_size=1, epoch=3, return_keys=True), 5)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2:] == b[2:]
    stream = TrainStream(cfg, epoch=3)
    assert torch.equal(_take(stream, 2)[1][0], first[1][0]) and torch.equal(_take(stream, 2)[1][0], first[1][0])


@pytest.mark.parametrize("change", [{"epoch": 4}, {"seed": 1}])
def test_another_epoch_or_seed_gives_other_batches(shards: dict[str, str], change: dict) -> None:
    cfg = data_config(shards["content4"], shards["style2"])
    base = _take(TrainStream(cfg, epoch=3, return_keys=True), 3)
    other_cfg = data_config(shards["content4"], shards["style2"], seed=change.get("seed", 0))
    other = _take(TrainStream(other_cfg, epoch=change.get("epoch", 3), return_keys=True), 3)
    assert [b[2] for b in base] != [b[2] for b in other]
    assert not torch.equal(torch.cat([b[0] for b in base]), torch.cat([b[0] for b in other]))


def test_corrupt_samples_are_skipped_counted_and_warned(shards: dict[str, str]) -> None:
    cfg = data_config(shards["bad"], shards["style2"], workers=2, batch_size=2, shuffle_buffer=4)
    stream = TrainStream(cfg, return_keys=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the workers' warnings go to stderr anyway
        batches = _take(stream, 10)
    assert not {"bad0x002", "bad1x004"} & _keys(batches, 2)
    assert stream.counters["corrupt_content"] >= 2 and stream.counters["corrupt_style"] == 0
    with pytest.warns(RuntimeWarning, match="skipping corrupt content"):
        _take(TrainStream(data_config(shards["bad"], shards["style2"], batch_size=2)), 3)


def test_a_truncated_shard_is_skipped_not_fatal(shards: dict[str, str], tmp_path: Path) -> None:
    good = Path(shards["one"].replace("{000000..000000}", "000000"))
    broken = tmp_path / "broken-000001.tar"
    broken.write_bytes(good.read_bytes()[:3000])
    (tmp_path / "broken-000000.tar").write_bytes(good.read_bytes())
    stream = TrainStream(data_config(f"{tmp_path}/broken-{{000000..000001}}.tar", shards["style2"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert len(_take(stream, 12)) == 12
    assert stream.counters["corrupt_content"] >= 1


def test_a_missing_shard_is_named_at_construction(shards: dict[str, str], tmp_path: Path) -> None:
    missing = f"{tmp_path}/gone-{{000000..000001}}.tar"
    with pytest.raises(FileNotFoundError, match=r"gone-000000\.tar"):
        TrainStream(data_config(shards["content4"], missing))
    with pytest.raises(FileNotFoundError, match=r"gone-000000\.tar"):
        eval_pairs(data_config(shards["content4"], shards["style2"], eval_content=missing))


def test_rank_and_world_size_default_to_the_environment(shards: dict[str, str]) -> None:
    # In a fresh process: this one may hold a process group from in-process training tests, which wins over env.
    import json
    import subprocess
    import sys

    from helpers import REPO, subprocess_env

    script = ("import json, sys\nsys.path.insert(0, 'tests')\nfrom data_fixtures import data_config\n"
              "from distst.data import TrainStream\n"
              f"s = TrainStream(data_config({shards['content4']!r}, {shards['style2']!r}))\n"
              "print(json.dumps([s.rank, s.world_size]))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**subprocess_env(), "RANK": "1", "WORLD_SIZE": "2"},
                          capture_output=True, text=True, timeout=patience(120))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [1, 2]
    with pytest.raises(ValueError, match="rank 2"):
        TrainStream(data_config(shards["content4"], shards["style2"]), rank=2, world_size=2)


def test_eval_pairs_are_the_first_samples_center_cropped(shards: dict[str, str]) -> None:
    cfg = data_config(shards["content4"], shards["style2"], eval_pairs=5, eval_size=20, eval_style=shards["one"])
    content, style = eval_pairs(cfg)
    assert content.shape == style.shape == (5, 3, 20, 20)
    first = read_shard_samples(shards["content4"].replace("{000000..000003}", "000000"))[0]
    pixels = np.asarray(Image.open(io.BytesIO(first["jpg"])).convert("RGB"))  # 40 x 48
    expected = torch.from_numpy(pixels[10:30, 14:34].copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(content[0], expected)
    again = eval_pairs(cfg)
    assert torch.equal(again[0], content) and torch.equal(again[1], style)
    with pytest.raises(ValueError, match="only 6 usable images"):
        eval_pairs(data_config(shards["small"], shards["style2"], eval_pairs=7))
