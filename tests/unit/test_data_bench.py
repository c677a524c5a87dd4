"""``distst bench data`` smoke test: tiny shards, few batches; both loaders report a rate (not a timing test)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from data_fixtures import write_shards

from distst.bench.data import compare_loaders
from distst.cli import main
from distst.commands.bench import BENCHES


def test_bench_data_prints_both_rates_and_their_ratio(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shards = write_shards(tmp_path, "bench", shards=2, per_shard=6)
    args = ["bench", "data", "--shards", shards, "--batches", "3", "--warmup", "1", "--batch-size", "2",
            "--crop", "16", "--workers", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    rates = {name: re.search(rf"{name}\s.*?([\d.]+)\s*│\s*$", out, re.M) for name in ("webdataset", "folder")}
    assert all(rates.values()), out
    assert all(float(match.group(1)) > 0 for match in rates.values())
    assert re.search(r"ratio.*\d+\.\d+x", out)


def test_compare_loaders_returns_rates_and_ratio(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, "bench", shards=1, per_shard=4)
    results = compare_loaders(shards, batches=2, warmup=1, batch_size=2, crop=16, workers=1)
    assert results["webdataset"]["images"] == results["folder"]["images"] == 4
    expected = results["webdataset"]["images_per_s"] / results["folder"]["images_per_s"]
    assert results["ratio"]["webdataset_over_folder"] == pytest.approx(expected)


def test_bench_targets_are_listed_and_all_exists(capsys: pytest.CaptureFixture) -> None:
    assert "data" in BENCHES
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "data" in out and "all" in out


def test_bench_all_runs_every_target_with_its_defaults(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr("distst.commands.bench.BENCHES", {"data": "distst.bench.data"})  # others may be slow
    assert main(["bench", "all"]) == 0
    out = capsys.readouterr().out
    assert "== distst bench data" in out and "webdataset" in out and "folder" in out
