"""Atomic, checked, resumable checkpoints of a DeepSpeed engine plus everything else a bitwise resume needs.

A checkpoint is a directory ``checkpoints/step_00000100``: one folder per optimizer stage of the model
(``main/`` for style transfer; ``generator/``, ``discriminator/`` for a GAN) with DeepSpeed's own files
(module, optimizer, scheduler; ZeRO partitions per rank), ``rng_rank<r>.pt`` for every rank, ``state.pt``
(step, method state) and, written last, ``manifest.json``: the size of every file. It is written as
``step_00000100.tmp``, flushed to disk, and renamed only when every rank has finished, so a kill at any
moment leaves the last good checkpoint intact.

Before a resume the newest checkpoint is checked (manifest, sizes, every torch file's checksums, the small
files loaded); a damaged one is reported by name and file and the next older one is used (the last
``train.keep_checkpoints`` are kept for this). A checkpoint that passes the checks but that DeepSpeed still
cannot load falls back the same way. Only when none is usable does the run stop, with one line.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .. import atomic
from ..distributed import is_distributed, on_main_then_shared
from ..errors import DiststError
from .engine import DistInfo

MANIFEST = "manifest.json"
STATE_FILE = "state.pt"
STAGING_SUFFIX = ".tmp"
MANIFEST_FORMAT = 1

# Which checkpoint ``load`` really restored when it fell back from the one it was given, so that callers who
# read more of the checkpoint afterwards by its path (``load_rank_extra``) read the same one.
_loaded_instead: dict[Path, Path] = {}


class CheckpointError(DiststError, RuntimeError):
    """No checkpoint of a run can be resumed from, or one cannot be written; the message names the file.

    A fault of saved state: the CLI prints it as one line (exit code 2) rather than a traceback, and a Slurm
    job then fails instead of looping on requeues.
    """


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


RNG_KEYS = ("torch", "numpy", "numpy_pos", "python", "cuda")


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
             "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _say(message: str) -> None:
    print(f"distst: {message}", file=sys.stderr, flush=True)


# --- writing ------------------------------------------------------------------------------------------------

def save(engines: Mapping[str, Any], root: Path, step: int, state: dict[str, Any], info: DistInfo,
         keep: int, rank_extra: Mapping[str, Any] | None = None) -> Path:
    """Write checkpoint ``step`` of every stage's engine from every rank (collective); returns its directory.

    ``rank_extra``: this rank's own state (e.g. its data position), stored with its RNG; read back by ``load_rank_extra``.
    """
    final = root / tag_for(step)
    staging = root / (tag_for(step) + STAGING_SUFFIX)

    def prepare() -> None:
        if info.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)

    _everywhere_or_raise(prepare, f"creating checkpoint {staging}")  # also the barrier before DeepSpeed writes
    for stage, engine in engines.items():
        engine.save_checkpoint(str(staging), tag=stage, save_latest=False)

    def own_files() -> None:
        staging.mkdir(parents=True, exist_ok=True)  # DeepSpeed creates it on writing ranks only
        torch.save({**rng_state(), **(rank_extra or {})}, staging / f"rng_rank{info.rank}.pt")
        if info.is_main:
            torch.save(state, staging / STATE_FILE)

    _everywhere_or_raise(own_files, f"writing checkpoint {staging}")  # also the barrier before the manifest

    def seal_and_publish() -> None:
        if info.is_main:
            write_manifest(staging, step=step, world_size=info.world_size)
            publish(staging, final)
            for old in complete_checkpoints(root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)

    _everywhere_or_raise(seal_and_publish, f"finishing checkpoint {final}")
    return final


def write_manifest(staging: Path, step: int, world_size: int) -> dict[str, Any]:
    """Flush every file of a finished staging directory and record its size in ``manifest.json`` (last)."""
    files = {}
    for file in sorted(p for p in staging.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[file.relative_to(staging).as_posix()] = atomic.fsync_file(file)
    manifest = {"format": MANIFEST_FORMAT, "step": step, "world_size": world_size, "files": files}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    atomic.fsync_file(staging / MANIFEST)
    for folder in sorted({p.parent for p in staging.rglob("*")} | {staging}, reverse=True):
        atomic.fsync_dir(folder)
    return manifest


def publish(staging: Path, final: Path) -> Path:
    """Rename a sealed staging directory to its final name and make the rename durable."""
    shutil.rmtree(final, ignore_errors=True)  # a re-save of the same step, e.g. over a damaged one
    staging.rename(final)
    atomic.fsync_dir(final.parent)
    return final


def remove_stale_staging(root: Path) -> list[Path]:
    """Delete ``step_*.tmp`` directories an interrupted save left behind; returns what was removed."""
    stale = sorted(p for p in root.glob(f"step_*{STAGING_SUFFIX}") if p.is_dir()) if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


# --- checking -----------------------------------------------------------------------------------------------

def complete_checkpoints(root: Path) -> list[Path]:
    """Renamed (finished) checkpoint directories, oldest first; staging directories are ignored."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(STAGING_SUFFIX))


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / MANIFEST).read_text())


def problem(path: Path) -> str | None:
    """What makes checkpoint ``path`` unusable, naming the file, or None when it passes every check.

    Checks: the manifest exists; every file it lists exists with its recorded size; every torch file's
    checksums hold (torch.load itself does not verify them: a flipped byte would load as a wrong weight);
    ``state.pt`` and the RNG files load with ``weights_only=True``.
    """
    if not (path / MANIFEST).is_file():
        return f"{MANIFEST} is missing (the save did not finish, or predates checked checkpoints)"
    try:
        recorded: dict[str, int] = read_manifest(path)["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{MANIFEST} cannot be read ({err})"
    if STATE_FILE not in recorded:
        return f"{MANIFEST} lists no {STATE_FILE}"
    for name, size in recorded.items():
        found = _size_problem(path / name, size)
        if found:
            return f"{name} {found}"
    for name in recorded:
        found = _torch_file_problem(path / name) if name.endswith(".pt") else None
        if found:
            return f"{name} {found}"
    for name in recorded:
        if name == STATE_FILE or (name.startswith("rng_rank") and name.endswith(".pt")):
            try:
                torch.load(path / name, weights_only=True)
            except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
                return f"{name} cannot be loaded ({_first_line(err)})"
    return None


def _size_problem(file: Path, size: int) -> str | None:
    if not file.is_file():
        return "is missing"
    actual = file.stat().st_size
    return None if actual == size else f"has {actual} bytes, {size} were written"


def _torch_file_problem(file: Path) -> str | None:
    """Whether a torch.save file (a zip archive) is whole: its directory parses and every CRC matches."""
    try:
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as err:
        return f"is not a readable torch file ({_first_line(err)})"
    return None if bad is None else f"is corrupt (checksum mismatch in record {bad})"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


# --- choosing and loading -----------------------------------------------------------------------------------

def newest_valid(root: Path, older_than: Path | None = None) -> Path | None:
    """The newest checkpoint under ``root`` (older than ``older_than`` if given) that passes ``problem``.

    Each damaged one on the way is reported. Raises ``CheckpointError`` when there are checkpoints but none
    is usable: starting over silently would throw their work away.
    """
    found, damaged = _scan(root, older_than)
    if found is None and damaged:
        raise CheckpointError(_none_usable(root, damaged))
    return found


def _scan(root: Path, older_than: Path | None = None) -> tuple[Path | None, list[str]]:
    """(newest usable checkpoint or None, "name: reason" of each damaged newer one), reporting the damaged."""
    damaged = []
    for candidate in reversed(complete_checkpoints(root)):
        if older_than is not None and candidate.name >= older_than.name:
            continue
        found = problem(candidate)
        if found is None:
            if damaged:
                _say(f"falling back to {candidate.name}")
            return candidate, damaged
        _say(f"checkpoint {candidate} is damaged: {found}; trying the one before it")
        damaged.append(f"{candidate.name}: {found}")
    return None, damaged


def _none_usable(root: Path, reasons: list[str]) -> str:
    return (f"no usable checkpoint in {root} ({'; '.join(reasons)}); restore one, or move {root} away "
            "to train from the start")


def latest(root: Path) -> Path | None:
    """The checkpoint to resume from: the newest one that passes the checks, or None for a fresh start.

    Called by every rank at the start of a run, before any save (collective when a process group is up):
    rank 0 removes staging directories of interrupted saves, checks, and every rank gets its choice.
    """

    def choose() -> Path | None:
        for stale in remove_stale_staging(root):
            _say(f"removed {stale}, left by an interrupted save")
        return newest_valid(root)

    return on_main_then_shared(choose)


def load(engines: Mapping[str, Any], path: Path, info: DistInfo, *, fall_back: bool = True) -> dict[str, Any]:
    """Restore every stage's engine (module, optimizer, scheduler) and this rank's RNG; returns the loop state.

    If any rank cannot load ``path`` (DeepSpeed or torch fail on a file the checks could not fault), every
    rank moves on to the next older usable checkpoint, so the returned state's ``step`` may be earlier than
    ``path``'s. Collective. Raises ``CheckpointError`` when none loads.
    """
    _check_world_size(path, info)
    reasons: list[str] = []
    candidate: Path | None = path
    while candidate is not None:
        state, error = _try_load(engines, candidate, info)
        errors = _gather(error)
        if not any(errors):
            if candidate != path:
                _loaded_instead[path] = candidate
                if info.is_main:
                    _say(f"resuming from {candidate.name} instead of {path.name}")
            return state
        reason = "; ".join(f"rank {rank}: {text}" for rank, text in enumerate(errors) if text)
        if info.is_main:
            _say(f"checkpoint {candidate} cannot be loaded ({reason}); trying the one before it")
        reasons.append(f"{candidate.name}: {reason}")
        if not fall_back:
            break
        candidate, damaged = on_main_then_shared(lambda older=candidate: _scan(path.parent, older_than=older))
        reasons.extend(damaged)
    raise CheckpointError(_none_usable(path.parent, reasons))


def _try_load(engines: Mapping[str, Any], path: Path, info: DistInfo) -> tuple[dict[str, Any], str | None]:
    """Load ``path`` on this rank; returns (state, None) or ({}, what failed, naming the files)."""
    for stage, engine in engines.items():
        try:
            load_path, _ = engine.load_checkpoint(str(path), tag=stage, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
        except Exception as err:  # noqa: BLE001 - DeepSpeed raises anything from AssertionError to KeyError
            return {}, f"DeepSpeed cannot load {_stage_files(path, stage)}: {_first_line(err)}"
        if load_path is None:
            return {}, f"DeepSpeed found no checkpoint in {_stage_files(path, stage)}"
    rng_file = path / f"rng_rank{info.rank}.pt"
    try:
        set_rng_state(torch.load(rng_file, weights_only=True))
        return torch.load(path / STATE_FILE, weights_only=True), None
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        return {}, f"cannot load {rng_file.name} or {STATE_FILE}: {_first_line(err)}"


def loaded(path: Path) -> Path:
    """The checkpoint ``load(engines, path, ...)`` actually restored: ``path``, or the older one it fell back to."""
    return _loaded_instead.get(path, path)


def load_rank_extra(path: Path, rank: int) -> dict[str, Any]:
    """The ``rank_extra`` that ``save`` stored for ``rank`` in checkpoint ``path`` (its RNG keys left out).

    After ``load`` fell back from ``path`` to an older checkpoint, this reads the older one: the one restored.
    """
    saved = torch.load(loaded(path) / f"rng_rank{rank}.pt", weights_only=True)
    return {k: v for k, v in saved.items() if k not in RNG_KEYS}


def _stage_files(path: Path, stage: str) -> str:
    names = sorted(p.relative_to(path).as_posix() for p in (path / stage).glob("*") if p.is_file())
    return ", ".join(names) if names else f"{stage}/ (empty)"


def _check_world_size(path: Path, info: DistInfo) -> None:
    """A different number of processes is a user's change, not damage: no fallback, one clear line."""
    try:
        written_by = int(read_manifest(path)["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # the load itself reports a damaged manifest
    if written_by != info.world_size:
        raise CheckpointError(f"{path} was written by {written_by} process(es) and this run has "
                              f"{info.world_size}: resume with the same world size (or move "
                              f"{path.parent} away to train from the start)")


# --- agreeing across ranks ----------------------------------------------------------------------------------

def _gather(error: str | None) -> list[str | None]:
    """Every rank's error (None where it succeeded), on every rank."""
    if not is_distributed():
        return [error]
    errors: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    return errors


def _everywhere_or_raise(work: Callable[[], None], what: str) -> None:
    """Run this rank's share of ``work``, then agree: if any rank failed, every rank raises (no rank hangs)."""
    try:
        work()
        error = None
    except (OSError, RuntimeError) as err:  # torch's writer reports a full disk as a RuntimeError
        error = f"{what}: {_first_line(err)}"
    failures = [text for text in _gather(error) if text]
    if failures:
        raise CheckpointError(failures[0])
