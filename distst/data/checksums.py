"""Content checksums of a run's input files: a run's identity is what its files hold, not where they lie.

The weight files a model names (``model.vgg_weights``, ``decoder_weights``, ... : its record's
``weight_keys``), ``model.init_from`` and the shards (``data.content``, ``data.style``, the evaluation sets)
enter ``Config.config_hash`` and the resume check as the sha256 of their content, so moving ``weights/`` or
the shards to another file system (a cluster's scratch) keeps the run's hash and resumes it, while other
content under the same path is refused. A shard pattern's checksum is that of its expanded shards in order,
each taken from the shard manifest beside it when the manifest lists the file at its size (``distst shards``
writes them; the bundled ``sample:`` set has them), else read. Files are read once per process: checksums are
cached by (path, size, mtime). A remote shard (``s3:``, ``pipe:``...) or a file that does not exist has no
checksum: its path stands for it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .. import registry
from ..errors import DataError

if TYPE_CHECKING:
    from ..config import Config

PREFIX = "sha256:"
REMOTE_PREFIXES = ("pipe:", "http:", "https:", "s3:", "gs:")
SHARD_KEYS = ("data.content", "data.style", "data.eval_content", "data.eval_style")

_FILES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256
_MANIFESTS: dict[tuple[str, int, int], dict[str, tuple[int, str]]] = {}  # manifest -> {file: (bytes, sha256)}


def _stat_key(path: Path) -> tuple[str, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return os.path.abspath(path), stat.st_size, stat.st_mtime_ns


def file_sha256(path: str | Path) -> str | None:
    """The sha256 of a local file (None when it is not one), read once per (path, size, mtime)."""
    key = _stat_key(Path(path))
    if key is None or not Path(path).is_file():
        return None
    if key not in _FILES:
        from .manifest import file_sha256 as read_sha256  # webdataset: imported only when a file is hashed

        _FILES[key] = read_sha256(path)
    return _FILES[key]


def _listed(folder: Path) -> dict[str, tuple[int, str]]:
    """``{file: (bytes, sha256)}`` of every shard the shard manifests in ``folder`` list."""
    listed: dict[str, tuple[int, str]] = {}
    for manifest in sorted(folder.glob("*.json")):
        key = _stat_key(manifest)
        if key is None:
            continue
        if key not in _MANIFESTS:
            try:
                entries = json.loads(manifest.read_text()).get("shards", [])
            except (OSError, ValueError, AttributeError):  # not a shard manifest
                entries = []
            entries = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
            _MANIFESTS[key] = {e["file"]: (e.get("bytes"), e["sha256"]) for e in entries
                               if isinstance(e.get("file"), str) and e.get("sha256")}
        listed.update(_MANIFESTS[key])
    return listed


def shards_sha256(pattern: str) -> str | None:
    """One sha256 over the content of every shard ``pattern`` names, in order; None when any is remote or missing."""
    from .sources import expand_pattern  # the one place patterns (and ``sample:``) become files

    try:
        urls = expand_pattern(pattern)
    except DataError:
        return None
    digests = []
    for url in urls:
        path = Path(url.removeprefix("file:"))
        if url.startswith(REMOTE_PREFIXES) or "://" in url:
            return None
        size_and_sum = _listed(path.parent).get(path.name)
        key = _stat_key(path)
        if size_and_sum is not None and key is not None and size_and_sum[0] in (None, key[1]):
            digests.append(size_and_sum[1])
        else:
            digest = file_sha256(path)
            if digest is None:
                return None
            digests.append(digest)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest() if digests else None


def input_paths(cfg: Config) -> dict[str, str]:
    """The set path-like keys of ``cfg``: ``{dotted key: path or shard pattern}``."""
    model_keys = ("init_from", *registry.model_record(cfg.model.name).weight_keys)
    found = {f"model.{key}": getattr(cfg.model, key, None) for key in model_keys}
    found.update({key: getattr(cfg.data, key.split(".")[1]) for key in SHARD_KEYS})
    found["distill.teacher"] = cfg.distill.teacher
    return {key: value for key, value in found.items() if isinstance(value, str) and value}


def checksum(key: str, value: str) -> str | None:
    """``sha256:<hex>`` of what the path-like ``key`` set to ``value`` holds; None when it cannot be read here."""
    digest = shards_sha256(value) if key in SHARD_KEYS else file_sha256(value)
    return None if digest is None else PREFIX + digest


def checksums(cfg: Config) -> dict[str, str | None]:
    """``{dotted key: sha256:<hex> or None}`` for every set path-like key of ``cfg``."""
    return {key: checksum(key, value) for key, value in input_paths(cfg).items()}
