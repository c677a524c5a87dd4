"""The bundled sample set (``distst/data/sample_shards``): names the config defaults expect, sources/licences, size, reproducibility."""

from __future__ import annotations

import io
import json
from pathlib import Path

import PIL
import pytest
from PIL import Image

from distst.config import DataConfig
from distst.data import TrainStream
from distst.data.bundled import sample_location
from distst.data.manifest import read_shard_samples, verify_manifest
from distst.data.sample import PHOTOS, TEXTURES

SAMPLE = sample_location()
FILES = ["README.md", "content-000000.tar", "content-000001.tar", "content.json",
         "style-000000.tar", "style-000001.tar", "style.json"]


def test_sample_set_has_the_names_the_config_defaults_expect() -> None:
    assert sorted(p.name for p in SAMPLE.iterdir()) == FILES
    defaults = DataConfig()
    assert defaults.content == "sample:content-{000000..000001}.tar"
    assert defaults.style == "sample:style-{000000..000001}.tar"
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 5 * 1024 * 1024


@pytest.mark.parametrize(("name", "minimum"), [("content", 24), ("style", 12)])
def test_sample_shards_verify_and_hold_256px_jpegs(name: str, minimum: int) -> None:
    assert verify_manifest(SAMPLE / f"{name}.json", progress=False) == []
    manifest = json.loads((SAMPLE / f"{name}.json").read_text())
    assert manifest["samples"] >= minimum and manifest["skipped"] == []
    assert [s["samples"] > 0 for s in manifest["shards"]] == [True, True]
    for shard in manifest["shards"]:
        for sample in read_shard_samples(SAMPLE / shard["file"]):
            with Image.open(io.BytesIO(sample["jpg"])) as img:
                assert min(img.size) == 256 and img.mode == "RGB"


def test_readme_lists_every_source_and_licence() -> None:
    readme = (SAMPLE / "README.md").read_text()
    for image in (*PHOTOS, *TEXTURES):
        assert f"`{image.name}`" in readme and image.licence in readme
    for kind in ("brush", "mosaic", "stripes"):
        assert f"`{kind}`" in readme
    assert "CC0" in readme and "public domain" in readme


def test_default_config_streams_from_the_sample_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # sample: names the bundled shards from any working directory
    content, style = next(iter(TrainStream(DataConfig(crop=64, batch_size=2, workers=0), rank=1, world_size=2)))
    assert content.shape == style.shape == (2, 3, 64, 64)


def test_rebuilding_the_sample_set_reproduces_it(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    from distst.data.sample import build_sample

    rebuilt = build_sample(tmp_path, workers=2, progress=False)
    for name, manifest in rebuilt.items():
        committed = json.loads((SAMPLE / f"{name}.json").read_text())
        assert [(s["file"], s["samples"]) for s in manifest["shards"]] == \
               [(s["file"], s["samples"]) for s in committed["shards"]]
        if committed["build"]["pillow"] == PIL.__version__:  # JPEG bytes depend on the encoder's version
            assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in committed["shards"]]
    assert (tmp_path / "README.md").read_text() == (SAMPLE / "README.md").read_text()
