"""``build_shards``: a folder of images (or existing tars) -> resumable, byte-reproducible WebDataset shards.

Determinism is what makes resuming safe: inputs are sorted, input ``i`` always lands in shard
``i // shard_size`` (skipped inputs leave a shard short rather than shifting later ones), keys are input
positions, and tar members carry fixed mtimes and owners. A shard is written under a temp name and renamed
when complete, then recorded in ``NAME.journal.jsonl``; a re-run keeps every recorded shard whose file still
has its checksum and recomputes only the rest, so an interrupted-then-resumed build equals a clean one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import PIL
import webdataset as wds

from ..errors import DataError
from .encode import Encoded, EncodeOptions, Skipped, encode_item
from .manifest import (
    MANIFEST_FORMAT,
    file_sha256,
    manifest_path,
    progress_bar,
    read_manifest,
    shard_file,
    write_json_atomic,
)
from .sources import SourceItem, find_sources

TAR_MTIME = 0  # fixed member times and owners (TarWriter's defaults) make byte-identical shards possible


@dataclass(frozen=True)
class BuildOptions:
    """Everything that decides the shards' bytes; a resume only reuses shards built with equal options."""

    resize: int = 512
    shard_size: int = 1000
    quality: int = 95
    labels: bool = True
    upscale: bool = False


def _journal_path(out: Path, name: str) -> Path:
    return out / f"{name}.journal.jsonl"


def _inputs_digest(items: Iterable[SourceItem]) -> str:
    return hashlib.sha256("\n".join(f"{item.rel}\t{item.stamp}" for item in items).encode()).hexdigest()


def _previous_entries(out: Path, name: str, options: BuildOptions) -> dict[str, dict]:
    """Shard entries of an earlier (complete or interrupted) build with the same options, by file name."""
    entries: dict[str, dict] = {}
    manifest = manifest_path(out, name)
    if manifest.is_file():
        try:
            old = read_manifest(manifest)
        except ValueError:
            old = {}
        if old.get("options") == asdict(options):
            entries.update((e["file"], e) for e in old["shards"])
    journal = _journal_path(out, name)
    if journal.is_file():
        for line in journal.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the interruption
            if record.get("options") == asdict(options):
                entries[record["shard"]["file"]] = record["shard"]
    return entries


def _still_valid(entry: dict | None, out: Path, digest: str) -> bool:
    """A finished shard is kept when it was built from the same inputs and its bytes are unchanged."""
    if entry is None or entry.get("inputs_sha256") != digest:
        return False
    path = out / entry["file"]
    return path.is_file() and path.stat().st_size == entry["bytes"] and file_sha256(path) == entry["sha256"]


def _encode_task(task: tuple[int, SourceItem], options: EncodeOptions) -> Encoded | Skipped:
    return encode_item(*task, options)


def _encoded_stream(tasks: list[tuple[int, SourceItem]], options: EncodeOptions, workers: int) -> Iterator[Encoded | Skipped]:
    """Results in input order; decode/resize/encode run in ``workers`` processes."""
    encode = functools.partial(_encode_task, options=options)
    if workers <= 1 or len(tasks) <= 1:
        yield from map(encode, tasks)
        return
    chunk = max(1, min(16, len(tasks) // (workers * 8)))
    # forkserver, not fork: a caller may be multi-threaded (a trainer, a notebook), and a forked child can
    # inherit a lock another thread held and hang; the server imports this module once for all workers.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with context.Pool(workers) as pool:
        yield from pool.imap(encode, tasks, chunksize=chunk)


class _ShardWriter:
    """Writes one shard to ``FILE.partial`` and renames it into place only when complete."""

    def __init__(self, out: Path, file: str, inputs: range, digest: str):
        self.path = out / file
        self.tmp = out / (file + ".partial")
        self.handle = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish()
        self.tar = wds.TarWriter(self.handle, encoder=False, mtime=TAR_MTIME)
        self.entry: dict = {"file": file, "samples": 0, "bytes": 0, "sha256": "",
                            "inputs": [inputs.start, inputs.stop], "inputs_sha256": digest,
                            "skipped": [], "small": [], "converted": {}}

    def add(self, result: Encoded | Skipped) -> None:
        if isinstance(result, Skipped):
            self.entry["skipped"].append({"source": result.source, "reason": result.reason, "detail": result.detail})
            return
        self.tar.write(result.sample())
        self.entry["samples"] += 1
        if result.small:
            self.entry["small"].append(result.meta["source"])
        if result.converted_from:
            converted = self.entry["converted"]
            converted[result.converted_from] = converted.get(result.converted_from, 0) + 1

    def finish(self) -> dict:
        self.tar.close()
        self.handle.close()
        self.entry["bytes"] = self.tmp.stat().st_size
        self.entry["sha256"] = file_sha256(self.tmp)
        os.replace(self.tmp, self.path)
        return self.entry


def _remove_stale_shards(out: Path, name: str, count: int) -> None:
    """Shards of an earlier, larger build under the same name would otherwise be picked up by globs."""
    pattern = re.compile(rf"{re.escape(name)}-(\d{{6}})\.tar(\.partial)?$")
    for path in out.iterdir():
        match = pattern.match(path.name)
        if match and (match.group(2) or int(match.group(1)) >= count):
            path.unlink()


def _summary(name: str, source: str, options: BuildOptions, entries: list[dict], inputs: int) -> dict:
    skipped = [s for e in entries for s in e["skipped"]]
    converted: Counter[str] = Counter()
    for entry in entries:
        converted.update(entry["converted"])
    return {
        "format": MANIFEST_FORMAT, "name": name, "source": source, "options": asdict(options),
        "inputs": inputs, "samples": sum(e["samples"] for e in entries),
        "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        "skipped": skipped,
        "small": sum(len(e["small"]) for e in entries),
        "converted": dict(sorted(converted.items())),
        "shards": entries,
    }


def _discard_build(out: Path, name: str) -> None:
    """Remove every shard, the journal and any manifest of ``name``: a set of empty shards only misleads."""
    _remove_stale_shards(out, name, 0)
    _journal_path(out, name).unlink(missing_ok=True)
    manifest_path(out, name).unlink(missing_ok=True)


def _nothing_usable(src: str | Path, manifest: dict, shown: int = 5) -> str:
    reasons = ", ".join(f"{n} {reason}" for reason, n in manifest["skipped_by_reason"].items())
    examples = "; ".join(f"{s['source']}: {s['reason']}" for s in manifest["skipped"][:shown])
    more = f"; and {len(manifest['skipped']) - shown} more" if len(manifest["skipped"]) > shown else ""
    return f"no usable image among the {manifest['inputs']} inputs of {src} ({reasons}): {examples}{more}; no shards written"


def build_shards(
    src: str | Path,
    out: str | Path,
    name: str,
    *,
    options: BuildOptions | None = None,
    workers: int | None = None,
    source_label: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict | None:
    """Build (or resume) ``out/NAME-000000.tar ...`` and ``out/NAME.json``; returns the manifest.

    ``workers``: encoding processes (default: all cores). ``source_label``: what the manifest records as the
    source (default: ``src``). ``stop_after``: stop after writing that many new shards and return None
    (simulates an interrupted build; the journal keeps what was finished).
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"shard name {name!r} may only hold letters, digits, '_', '.', '-'")
    options = options or BuildOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = find_sources(src, labels=options.labels)
    workers = max(1, workers or os.cpu_count() or 1)
    plan = [range(start, min(start + options.shard_size, len(items))) for start in range(0, len(items), options.shard_size)]
    digests = [_inputs_digest(items[r.start:r.stop]) for r in plan]
    previous = _previous_entries(out, name, options)
    entries: list[dict | None] = [
        previous.get(shard_file(name, k)) if _still_valid(previous.get(shard_file(name, k)), out, digests[k]) else None
        for k in range(len(plan))
    ]
    pending = [k for k, entry in enumerate(entries) if entry is None]
    tasks = [(i, items[i]) for k in pending for i in plan[k]]
    encode_options = EncodeOptions(resize=options.resize, quality=options.quality, upscale=options.upscale)

    started = time.perf_counter()
    journal = _journal_path(out, name)
    results = _encoded_stream(tasks, encode_options, workers)
    try:
        with progress_bar(progress, total=len(items), initial=len(items) - len(tasks), unit="img", desc=name) as bar:
            for written, k in enumerate(pending, start=1):
                writer = _ShardWriter(out, shard_file(name, k), plan[k], digests[k])
                for result in (next(results) for _ in plan[k]):
                    writer.add(result)
                    bar.update(1)
                entries[k] = writer.finish()
                with journal.open("a") as f:
                    f.write(json.dumps({"options": asdict(options), "shard": entries[k]}) + "\n")
                if stop_after is not None and written >= stop_after and written < len(pending):
                    return None
    finally:
        results.close()  # ends the worker pool, also on errors and interruptions
    seconds = time.perf_counter() - started

    manifest = _summary(name, source_label or str(src), options, [e for e in entries if e is not None], len(items))
    if manifest["samples"] == 0:
        _discard_build(out, name)
        raise DataError(_nothing_usable(src, manifest))
    manifest["build"] = {
        "workers": workers, "seconds": round(seconds, 3),
        "images_per_s": round(len(tasks) / seconds, 1) if tasks and seconds > 0 else None,
        "encoded": len(tasks), "resumed_shards": len(plan) - len(pending), "pillow": PIL.__version__,
    }
    write_json_atomic(manifest_path(out, name), manifest)
    journal.unlink(missing_ok=True)
    _remove_stale_shards(out, name, len(plan))
    return manifest
