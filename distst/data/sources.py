"""Inputs of a shard build: image files below a folder, or image members of existing tar shards.

Every input becomes a ``SourceItem`` that a worker process can read on its own (a file path, or a
tar path plus the member's byte range), so decoding runs in parallel without sharing open files.
The listing is sorted, which makes the assignment of inputs to shards, and so the shards, deterministic.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import webdataset as wds

from ..errors import DataError
from ..images import IMAGE_SUFFIXES
from .bundled import resolve_sample

TAR_SUFFIX = ".tar"


@dataclass(frozen=True)
class SourceItem:
    """One input image: ``rel`` names it in manifests; bytes at ``offset`` (-1 = the whole file)."""

    rel: str
    path: str
    offset: int = -1
    size: int = -1
    label: str | None = None
    stamp: str = ""  # size and mtime: a resumed build redoes shards whose inputs were replaced

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            if self.offset < 0:
                return f.read()
            f.seek(self.offset)
            return f.read(self.size)


def expand_pattern(pattern: str) -> list[str]:
    """Brace-expanded shard URLs (``x-{000000..000009}.tar``), as the loader and the builder read them;
    ``sample:NAME`` names the bundled sample shards (``distst.data.bundled``)."""
    try:
        return wds.shardlists.expand_urls(resolve_sample(pattern))
    except ValueError as err:  # braceexpand.UnbalancedBracesError
        raise DataError(f"shard pattern {pattern!r}: {err}; write ranges as name-{{000000..000009}}.tar") from None


def _folder_label(rel: PurePosixPath) -> str | None:
    # WikiArt's layout is Genre/artist_title.jpg: the top-level folder is the style label.
    return rel.parts[0] if len(rel.parts) > 1 else None


def _stamp(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _tar_members(tar_path: Path, rel_prefix: str) -> list[SourceItem]:
    """Image members of an (uncompressed) WebDataset/img2dataset tar, in archive order."""
    items = []
    stamp = _stamp(tar_path)
    with tarfile.open(tar_path, "r:") as archive:
        for member in archive:
            if member.isreg() and PurePosixPath(member.name).suffix.lower() in IMAGE_SUFFIXES:
                items.append(SourceItem(rel=f"{rel_prefix}/{member.name}", path=str(tar_path),
                                        offset=member.offset_data, size=member.size, stamp=stamp))
    return items


def _from_files(files: list[Path], root: Path, labels: bool) -> list[SourceItem]:
    items: list[SourceItem] = []
    for path in files:
        rel = PurePosixPath(path.relative_to(root).as_posix())
        if path.suffix.lower() == TAR_SUFFIX:
            items.extend(_tar_members(path, str(rel)))
        else:
            items.append(SourceItem(rel=str(rel), path=str(path), label=_folder_label(rel) if labels else None,
                                    stamp=_stamp(path)))
    return items


def find_sources(src: str | Path, labels: bool = True) -> list[SourceItem]:
    """Images below a folder (recursively; ``.tar`` files found there contribute their image members),
    a single ``.tar``, or a brace pattern of tars (``shards/x-{000..009}.tar``). Sorted by path.

    ``labels``: give images in sub-folders their top-level folder as style label (WikiArt).
    """
    text = str(src)
    root = Path(text)
    if root.is_dir():
        files = sorted((p for p in root.rglob("*") if p.is_file()
                        and p.suffix.lower() in IMAGE_SUFFIXES | {TAR_SUFFIX}),
                       key=lambda p: p.relative_to(root).as_posix())
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) or .tar shards below {root}")
        return _from_files(files, root, labels)
    paths = [Path(p) for p in expand_pattern(text)]  # the same brace notation as the loader's
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"source {missing[0]} does not exist" if len(paths) > 1 else f"{text} does not exist")
    if any(p.suffix.lower() not in IMAGE_SUFFIXES | {TAR_SUFFIX} for p in paths):
        raise FileNotFoundError(f"{text} is neither a folder, an image, nor .tar shards")
    return _from_files(paths, Path(os.path.commonpath([p.parent for p in paths])), labels=False)
