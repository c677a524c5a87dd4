"""Two real gloo ranks (spawned processes) read disjoint samples through TrainStream's default rank lookup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from data_fixtures import data_config, gloo_rank_keys, write_shards


@pytest.mark.distributed
def test_two_gloo_ranks_read_disjoint_samples(tmp_path: Path) -> None:
    content = write_shards(tmp_path / "shards", "content", shards=2, per_shard=8)
    style = write_shards(tmp_path / "shards", "style", shards=1, per_shard=8)  # one shard: shared by sample
    cfg = data_config(content, style, workers=1, batch_size=2, shuffle_buffer=4).model_dump()
    # forkserver: the ranks fork from one fresh interpreter (torch imported once), never from this process,
    # whose own world-of-one process group (left by in-process training tests) a fork would inherit.
    mp.start_processes(gloo_rank_keys, args=(2, str(tmp_path / "init"), cfg, 6, str(tmp_path)), nprocs=2,
                       start_method="forkserver")
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(s["rank"], s["world_size"]) for s in seen] == [(0, 2), (1, 2)]
    for stream in ("content", "style"):
        first, second = (set(s[stream]) for s in seen)
        assert len(seen[0][stream]) == 12 and first and second and not first & second, stream
    assert {k[:8] for k in seen[0]["content"]} == {"content0"} and {k[:8] for k in seen[1]["content"]} == {"content1"}
