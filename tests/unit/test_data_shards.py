"""``distst shards build/verify``: exact manifests for messy inputs, checksums, resumable byte-identical builds."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import RESIZE, jpeg_bytes, make_image_folder
from PIL import Image

from distst.cli import main
from distst.data.manifest import read_shard_samples, verify_manifest
from distst.data.shards import BuildOptions, build_shards
from distst.data.sources import find_sources

OPTIONS = BuildOptions(resize=RESIZE, shard_size=8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("images")
    return root, make_image_folder(root)


@pytest.fixture(scope="module")
def clean_build(folder: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("clean")
    return out, build_shards(folder[0], out, "art", options=OPTIONS, workers=2, progress=False)


def _shard_bytes(out: Path, name: str = "art") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob(f"{name}-*.tar"))}


def _without_timing(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in ("build", "source")}


def test_manifest_counts_and_skip_reasons_are_exact(clean_build: tuple[Path, dict], folder: tuple[Path, dict]) -> None:
    out, manifest = clean_build
    expected = folder[1]
    assert manifest["inputs"] == expected["inputs"]
    assert manifest["samples"] == expected["samples"]
    assert {s["source"]: s["reason"] for s in manifest["skipped"]} == expected["skipped"]
    assert manifest["skipped_by_reason"] == {"not an image": 1, "truncated": 1}
    assert manifest["converted"] == expected["converted"]
    assert manifest["small"] == expected["small"]
    assert [s["file"] for s in manifest["shards"]] == [f"art-00000{i}.tar" for i in range(4)]
    assert [s["inputs"] for s in manifest["shards"]] == [[0, 8], [8, 16], [16, 24], [24, 30]]
    assert sum(s["samples"] for s in manifest["shards"]) == expected["samples"]
    assert manifest["options"] == {"resize": RESIZE, "shard_size": 8, "quality": 95, "labels": True, "upscale": False}
    assert manifest["build"]["workers"] == 2 and manifest["build"]["images_per_s"] > 0
    assert json.loads((out / "art.json").read_text()) == manifest


def test_samples_hold_resized_rgb_jpegs_with_source_metadata(clean_build: tuple[Path, dict]) -> None:
    out, manifest = clean_build
    samples = [s for shard in manifest["shards"] for s in read_shard_samples(out / shard["file"])]
    assert len(samples) == manifest["samples"] and len({s["__key__"] for s in samples}) == len(samples)
    by_source = {json.loads(s["json"])["source"]: s for s in samples}
    meta = json.loads(by_source["Cubism/artist_01.jpg"]["json"])
    assert meta == {"source": "Cubism/artist_01.jpg", "width": 48, "height": 41, "style": "Cubism"}
    for source, sample in by_source.items():
        with Image.open(io.BytesIO(sample["jpg"])) as img:
            assert img.format == "JPEG" and img.mode == "RGB", source
            expected_short = 16 if source == "tiny.jpg" else RESIZE  # never enlarged
            assert min(img.size) == expected_short, source
    assert "style" not in json.loads(by_source["gray.png"]["json"])
    with Image.open(io.BytesIO(by_source["deep16.png"]["jpg"])) as img:  # rescaled from 16 bits, not clipped
        assert 60 < np.asarray(img.convert("L")).mean() < 200


def test_verify_passes_and_a_flipped_byte_fails_through_the_cli(
        clean_build: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, _ = clean_build
    assert verify_manifest(out / "art.json", progress=False) == []
    assert main(["shards", "verify", str(out / "art.json")]) == 0
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in out.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    shard = copy / "art-000001.tar"
    data = bytearray(shard.read_bytes())
    data[1500] ^= 0xFF  # inside the first member's data: the tar still reads, only the checksum can tell
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["shards", "verify", str(copy / "art.json")]) == 1
    assert "art-000001.tar: sha256" in capsys.readouterr().out
    (copy / "art-000002.tar").unlink()
    assert any("art-000002.tar: missing" in p for p in verify_manifest(copy / "art.json", progress=False))
    assert main(["shards", "verify", str(tmp_path / "nope.json")]) == 2


def test_interrupted_build_resumes_to_byte_identical_shards(
        folder: tuple[Path, dict], clean_build: tuple[Path, dict], tmp_path: Path) -> None:
    clean_out, clean_manifest = clean_build
    assert build_shards(folder[0], tmp_path, "art", options=OPTIONS, workers=2, progress=False, stop_after=2) is None
    assert sorted(p.name for p in tmp_path.glob("art-*.tar")) == ["art-000000.tar", "art-000001.tar"]
    assert not (tmp_path / "art.json").exists() and (tmp_path / "art.journal.jsonl").exists()
    kept = (tmp_path / "art-000000.tar").stat()
    damaged = tmp_path / "art-000001.tar"
    damaged.write_bytes(damaged.read_bytes()[:-512])  # a finished shard that no longer matches: rebuilt

    resumed = build_shards(folder[0], tmp_path, "art", options=OPTIONS, workers=2, progress=False)
    assert resumed["build"]["resumed_shards"] == 1 and resumed["build"]["encoded"] == 22
    assert (tmp_path / "art-000000.tar").stat().st_mtime_ns == kept.st_mtime_ns  # kept, not rewritten
    assert _shard_bytes(tmp_path) == _shard_bytes(clean_out)
    assert _without_timing(resumed) == _without_timing(clean_manifest)
    assert not (tmp_path / "art.journal.jsonl").exists()

    again = build_shards(folder[0], tmp_path, "art", options=OPTIONS, workers=1, progress=False)
    assert again["build"]["resumed_shards"] == 4 and again["build"]["encoded"] == 0


def test_changed_options_rebuild_everything_and_drop_stale_shards(folder: tuple[Path, dict], tmp_path: Path) -> None:
    build_shards(folder[0], tmp_path, "art", options=OPTIONS, workers=1, progress=False)
    bigger = build_shards(folder[0], tmp_path, "art", options=BuildOptions(resize=RESIZE, shard_size=16, upscale=True),
                          workers=1, progress=False)
    assert bigger["build"]["resumed_shards"] == 0 and bigger["small"] == 1
    assert sorted(p.name for p in tmp_path.glob("art-*")) == ["art-000000.tar", "art-000001.tar"]
    assert verify_manifest(tmp_path / "art.json", progress=False) == []
    samples = [s for shard in bigger["shards"] for s in read_shard_samples(tmp_path / shard["file"])]
    for sample in samples:  # --upscale: the tiny image too now has the requested shorter side
        with Image.open(io.BytesIO(sample["jpg"])) as img:
            assert min(img.size) == RESIZE


def test_existing_tar_shards_are_a_source(clean_build: tuple[Path, dict], tmp_path: Path) -> None:
    out, manifest = clean_build
    items = find_sources(f"{out}/art-{{000000..000003}}.tar")
    assert len(items) == manifest["samples"]
    assert items[0].rel == "art-000000.tar/000000000.jpg" and items[0].label is None
    rebuilt = build_shards(f"{out}/art-{{000000..000003}}.tar", tmp_path, "again",
                           options=BuildOptions(resize=24, shard_size=100), workers=1, progress=False)
    assert rebuilt["samples"] == manifest["samples"] and rebuilt["skipped"] == []


def test_cli_build_prints_summary_and_rejects_bad_input(folder: tuple[Path, dict], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    args = ["shards", "build", str(folder[0]), "--out", str(tmp_path), "--name", "art", "--resize", str(RESIZE),
            "--shard-size", "8", "--workers", "2"]
    assert main([*args, "--stop-after", "1"]) == 0
    assert "run the same command again to resume" in capsys.readouterr().out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "28 samples in 4 shards from 30 inputs" in out and "1 truncated" in out and "images/s" in out
    assert main(["shards", "build", str(tmp_path / "missing"), "--out", str(tmp_path), "--name", "x"]) == 2
    assert main([*args, "--quality", "0"]) == 2
    assert main(["shards", "build", str(folder[0]), "--out", str(tmp_path), "--name", "a/b"]) == 2


def test_image_members_of_a_foreign_tar_are_read_by_offset(tmp_path: Path) -> None:
    tar_path = tmp_path / "in.tar"
    jpg = jpeg_bytes(np.full((40, 40, 3), 200, dtype=np.uint8))
    with tarfile.open(tar_path, "w") as tar:
        for name, data in (("a.txt", b"caption"), ("a.jpg", jpg)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (item,) = find_sources(tar_path)
    assert item.rel == "in.tar/a.jpg" and item.read() == jpg


def test_a_replaced_input_rebuilds_only_its_shard(folder: tuple[Path, dict], tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(folder[0], src)
    first = build_shards(src, tmp_path / "out", "art", options=OPTIONS, workers=1, progress=False)
    Image.new("RGB", (60, 50), (0, 128, 255)).save(src / "rgba.png")  # same name, new content (input 27: shard 3)
    second = build_shards(src, tmp_path / "out", "art", options=OPTIONS, workers=1, progress=False)
    assert second["build"]["resumed_shards"] == 3 and second["build"]["encoded"] == 6
    changed = [a["file"] for a, b in zip(first["shards"], second["shards"], strict=True) if a["sha256"] != b["sha256"]]
    assert changed == ["art-000003.tar"] and "RGBA" not in second["converted"]
