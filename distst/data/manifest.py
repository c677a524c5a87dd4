"""Shard manifests (``DIR/NAME.json``): names, checksums, atomic writes, and ``verify``.

A manifest lists every shard with its sample count, size and sha256, every skipped input with its reason,
and the options used, so that a build can be resumed, audited and re-checked without the sources.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import webdataset as wds
from tqdm import tqdm

from .. import atomic

MANIFEST_FORMAT = "distst-shards/1"
JPEG_MAGIC = b"\xff\xd8"


def progress_bar(enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar; when enabled, left to tqdm's defaults so ``TQDM_DISABLE`` and non-terminals are honoured."""
    return tqdm(**kwargs) if enabled else tqdm(disable=True, **kwargs)


def shard_file(name: str, index: int) -> str:
    return f"{name}-{index:06d}.tar"


def manifest_path(out: str | Path, name: str) -> Path:
    return Path(out) / f"{name}.json"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Readers never see half a manifest."""
    atomic.write_json(path, data, indent=1)


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a distst shard manifest (format {MANIFEST_FORMAT})")
    return manifest


def read_shard_samples(path: str | Path) -> list[dict]:
    """All samples of one shard through WebDataset's own tar reader (errors propagate)."""
    pipeline = wds.DataPipeline(wds.SimpleShardList([str(path)]), wds.tarfile_to_samples())
    return list(pipeline)


def _shard_problems(path: Path, entry: dict) -> tuple[list[str], int]:
    """Problems of one shard, and how many samples it really holds."""
    if not path.is_file():
        return [f"{path}: missing"], 0
    problems = []
    if path.stat().st_size != entry["bytes"]:
        problems.append(f"{path}: {path.stat().st_size} bytes, manifest says {entry['bytes']}")
    digest = file_sha256(path)
    if digest != entry["sha256"]:
        problems.append(f"{path}: sha256 {digest[:16]}... differs from the manifest's {entry['sha256'][:16]}...")
    try:
        samples = read_shard_samples(path)
    except Exception as err:  # noqa: BLE001 - a broken tar is a finding, not a crash
        return [*problems, f"{path}: unreadable tar ({err})"], 0
    if len(samples) != entry["samples"]:
        problems.append(f"{path}: {len(samples)} samples, manifest says {entry['samples']}")
    for sample in samples:
        if "json" not in sample or not sample.get("jpg", b"").startswith(JPEG_MAGIC):
            problems.append(f"{path}: sample {sample['__key__']} lacks a JPEG 'jpg' or a 'json' member")
    return problems, len(samples)


def verify_manifest(path: str | Path, progress: bool = True) -> list[str]:
    """Re-read every shard of a manifest; an empty list means counts and checksums all match."""
    path = Path(path)
    manifest = read_manifest(path)
    problems: list[str] = []
    total = 0
    for entry in progress_bar(progress, iterable=manifest["shards"], desc=f"verify {manifest['name']}", unit="shard"):
        found, count = _shard_problems(path.parent / entry["file"], entry)
        problems += found
        total += count
    if total != manifest["samples"]:
        problems.append(f"{path}: shards hold {total} samples, manifest says {manifest['samples']}")
    return problems
