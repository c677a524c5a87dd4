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

``Checkpointer`` is what the loop holds: given the engines (saved through DeepSpeed's own
``save_checkpoint``/``load_checkpoint``) and named ``Stateful`` objects (anything with ``state_dict`` /
``load_state_dict``: the method, the data position, the model's rank state), it saves them all and its
``load()`` returns what it restored (``Restored``: the checkpoint, its step, the names) rather than leaving
callers to ask afterwards which checkpoint a fallback chose. Shared objects live in ``state.pt`` (rank 0's),
per-rank ones beside each rank's RNG in ``rng_rank<r>.pt``, under their names: the files are those of before.

A save that fails on any rank (in DeepSpeed's ``save_checkpoint`` too) fails on every rank together, and the
staging directory is removed: the previous checkpoint stays the newest. A full disk (or quota, or file-size
limit) is ``distst.diskfull.DiskFull``: one line naming the file and the filesystem, exit code 75, and a
re-run after space is freed resumes from the previous checkpoint.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist

from .. import atomic
from ..diskfull import DiskFull, describe, save_torch, writing
from ..distributed import is_distributed, on_main_then_shared
from ..errors import DiststError
from . import elastic
from .engine import DistInfo, take_save_failure

MANIFEST = "manifest.json"
STATE_FILE = "state.pt"
STAGING_SUFFIX = ".tmp"
MANIFEST_FORMAT = 1
T = TypeVar("T")

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

    ``rank_extra``: this rank's own state (e.g. its data position), stored with its RNG; ``load`` returns it.
    """
    final = root / tag_for(step)
    staging = root / (tag_for(step) + STAGING_SUFFIX)

    def prepare() -> None:
        if info.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)

    def deepspeed_files() -> None:
        failure = None
        for stage, engine in engines.items():  # every stage on every rank: DeepSpeed's collectives stay in step
            engine.save_checkpoint(str(staging), tag=stage, save_latest=False)
            failure = failure or take_save_failure(engine)
        if failure is not None:
            raise failure

    def own_files() -> None:
        staging.mkdir(parents=True, exist_ok=True)  # DeepSpeed creates it on writing ranks only
        _write_torch({**rng_state(), **(rank_extra or {})}, staging / f"rng_rank{info.rank}.pt")
        if info.is_main:
            _write_torch(state, staging / STATE_FILE)

    def seal_and_publish() -> None:
        if info.is_main:
            write_manifest(staging, step=step, world_size=info.world_size)
            publish(staging, final)
            for old in complete_checkpoints(root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)

    try:
        _everywhere_or_raise(prepare, f"creating checkpoint {staging}", staging)  # also the barrier before DeepSpeed
        _everywhere_or_raise(deepspeed_files, f"writing checkpoint {staging}", staging)
        _everywhere_or_raise(own_files, f"writing checkpoint {staging}", staging)  # also the barrier before the manifest
        _everywhere_or_raise(seal_and_publish, f"finishing checkpoint {final}", staging)
    except (CheckpointError, DiskFull) as err:  # every rank is here: no one writes into the staging directory now
        if info.is_main:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, DiskFull):
            raise DiskFull(_not_written(err.detail, root, final), err.detail) from None
        raise
    return final


def _write_torch(obj: Any, path: Path) -> None:
    with writing(path):  # a full disk: DiskFull naming the file and its filesystem
        save_torch(obj, path)


def _not_written(detail: str, root: Path, final: Path) -> str:
    """The line of a checkpoint that ran out of space: what ran out, what is left, what to do."""
    done = complete_checkpoints(root)
    if final in done:  # it failed after the rename (flushing the directory): written, though maybe not durably
        return f"{detail}; checkpoint {final.name} was written, but the disk is full: free space, then re-run"
    kept = f"the last checkpoint, {done[-1].name}, is intact" if done else "there is no earlier checkpoint"
    return (f"{detail}; checkpoint {final.name} was not written (its partial files are removed), {kept}: free "
            f"space, then re-run the same command: it resumes from its last checkpoint")


def write_manifest(staging: Path, step: int, world_size: int) -> dict[str, Any]:
    """Flush every file of a finished staging directory and record its size in ``manifest.json`` (last)."""
    files = {}
    for file in sorted(p for p in staging.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[file.relative_to(staging).as_posix()] = atomic.fsync_file(file)
    manifest = {"format": MANIFEST_FORMAT, "step": step, "world_size": world_size, "files": files}
    with writing(staging / MANIFEST):
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
    if type(err).__name__ == "UnpicklingError":  # torch's own text goes on to say how to load it unsafely
        return "it holds objects other than tensors and plain data (code would run to load it): refused"
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


@dataclass
class Loaded:
    """What ``load`` restored: the checkpoint (an older one when it fell back), its loop state (``state.pt``) and
    this rank's own state (``rank_extra`` of ``save``, RNG keys left out), all from that one checkpoint."""

    path: Path
    state: dict[str, Any]
    rank_extra: dict[str, Any]
    #: The world size that wrote it; another than this run's: ``rank_extra`` holds every old rank's objects,
    #: under ``OLD_RANKS``, for their owners to merge (``distst.train.elastic``).
    written_by: int = 1


OLD_RANKS = "old_ranks"


def written_by(path: Path) -> int | None:
    """The number of processes that wrote checkpoint ``path`` (None: its manifest cannot say)."""
    try:
        return int(read_manifest(path)["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the load itself reports a damaged manifest


def load(engines: Mapping[str, Any], path: Path, info: DistInfo, *, fall_back: bool = True) -> Loaded:
    """Restore every stage's engine (module, optimizer, scheduler) and this rank's RNG; returns what it loaded.

    If any rank cannot load ``path`` (DeepSpeed or torch fail on a file the checks could not fault), every
    rank moves on to the next older usable checkpoint, so the returned ``path`` and step may be earlier than
    ``path``'s. Collective. Raises ``CheckpointError`` when none loads.
    """
    _check_world_size(path, info, engines)
    reasons: list[str] = []
    candidate: Path | None = path
    while candidate is not None:
        loaded, error = _try_load(engines, candidate, info)
        errors = _gather(error)
        if loaded is not None and not any(errors):
            if candidate != path and info.is_main:
                _say(f"resuming from {candidate.name} instead of {path.name}")
            return loaded
        reason = "; ".join(f"rank {rank}: {text}" for rank, text in enumerate(errors) if text)
        if info.is_main:
            _say(f"checkpoint {candidate} cannot be loaded ({reason}); trying the one before it")
        reasons.append(f"{candidate.name}: {reason}")
        if not fall_back:
            break
        candidate, damaged = on_main_then_shared(lambda older=candidate: _scan(path.parent, older_than=older))
        reasons.extend(damaged)
    raise CheckpointError(_none_usable(path.parent, reasons))


def _try_load(engines: Mapping[str, Any], path: Path, info: DistInfo) -> tuple[Loaded | None, str | None]:
    """Load ``path`` on this rank; returns (what it loaded, None) or (None, what failed, naming the files)."""
    old_world = written_by(path) or info.world_size
    resized = old_world != info.world_size
    for stage, engine in engines.items():
        try:
            if resized:
                load_path = elastic.load_engine(engine, path, stage)
            else:
                load_path, _ = engine.load_checkpoint(str(path), tag=stage, load_optimizer_states=True,
                                                      load_lr_scheduler_states=True)
        except Exception as err:  # noqa: BLE001 - DeepSpeed raises anything from AssertionError to KeyError
            return None, f"DeepSpeed cannot load {_stage_files(path, stage)}: {_first_line(err)}"
        if load_path is None:
            return None, f"DeepSpeed found no checkpoint in {_stage_files(path, stage)}"
    rng_file = path / f"rng_rank{info.rank if not resized else 0}.pt"
    try:
        state = torch.load(path / STATE_FILE, weights_only=True)
        if resized:  # every old rank's own objects for their owners to merge; the RNG seeded anew
            extra = {OLD_RANKS: elastic.old_rank_states(path, old_world)}
            elastic.reseed(path, int(state["step"]), info.rank, info.world_size)
        else:
            own = torch.load(rng_file, weights_only=True)
            set_rng_state(own)
            extra = {k: v for k, v in own.items() if k not in RNG_KEYS}
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        return None, f"cannot load the rng_rank files or {STATE_FILE}: {_first_line(err)}"
    return Loaded(path, state, extra, old_world), None


def _stage_files(path: Path, stage: str) -> str:
    names = sorted(p.relative_to(path).as_posix() for p in (path / stage).glob("*") if p.is_file())
    return ", ".join(names) if names else f"{stage}/ (empty)"


def _check_world_size(path: Path, info: DistInfo, engines: Mapping[str, Any]) -> None:
    """Another number of processes resumes (``distst.train.elastic``) where it can; where it cannot, that is a
    user's change, not damage: no fallback, one clear line."""
    old_world = written_by(path)
    zero_stage = max((int(getattr(e, "zero_optimization_stage", lambda: 0)()) for e in engines.values()), default=0)
    found = elastic.problem(path, old_world, info.world_size, zero_stage) if old_world is not None else None
    if found:
        raise CheckpointError(found)


# --- agreeing across ranks ----------------------------------------------------------------------------------

def _gather(error: T) -> list[T]:
    """Every rank's error (None where it succeeded), on every rank."""
    if not is_distributed():
        return [error]
    errors: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    return errors


def _everywhere_or_raise(work: Callable[[], None], what: str, where: Path | None = None) -> None:
    """Run this rank's share of ``work``, then agree: if any rank failed, every rank raises (no rank hangs):
    ``DiskFull`` when any rank's disk was full (its line), else ``CheckpointError``. ``where``: the directory
    written, for a full disk met without a file name."""
    failure: tuple[bool, str] | None = None
    try:
        work()
    except DiskFull as err:
        failure = (True, err.detail)
    except (OSError, RuntimeError) as err:  # torch's writer reports a full disk as a RuntimeError
        full = describe(err, getattr(err, "filename", None) or where or ".")
        failure = (True, full) if full else (False, f"{what}: {_first_line(err)}")
    failures = [found for found in _gather(failure) if found]
    if failures:
        full_disks = [text for is_full, text in failures if is_full]
        if full_disks:
            raise DiskFull(full_disks[0])
        raise CheckpointError(failures[0][1])


# --- the checkpointer the loop holds ------------------------------------------------------------------------

@runtime_checkable
class Stateful(Protocol):
    """What the checkpointer saves by name: torch's (and torchtitan's) ``state_dict`` / ``load_state_dict``."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


@dataclass
class Restored:
    """What ``Checkpointer.load`` restored: the checkpoint (an older one if the newest could not be loaded),
    its step, the loop state saved with it, and the names of the stateful objects found in it (a checkpoint
    from an older distst may lack some: those keep their fresh state)."""

    path: Path
    step: int
    state: dict[str, Any]
    names: tuple[str, ...] = field(default_factory=tuple)
    #: The number of processes that wrote it, where another than this run's (the run was re-split).
    resized_from: int | None = None


class Checkpointer:
    """Saves and restores a run's engines and named ``Stateful`` objects under ``root`` (``checkpoints/``).

    ``shared``: one state for the run, saved by rank 0 into ``state.pt`` (the method). ``per_rank``: each rank's
    own, saved beside its RNG (the data position, the model's rank state). Every rank's RNG is always saved.
    """

    def __init__(self, root: Path, info: DistInfo, engines: Mapping[str, Any], *,
                 shared: Mapping[str, Stateful] | None = None, per_rank: Mapping[str, Stateful] | None = None,
                 keep: int = 2) -> None:
        self.root, self.info, self.engines, self.keep = root, info, engines, keep
        self.shared, self.per_rank = dict(shared or {}), dict(per_rank or {})
        clash = (self.shared.keys() & self.per_rank.keys()) | (self.per_rank.keys() & set(RNG_KEYS))
        if clash:  # they would overwrite each other in the files
            raise ValueError(f"checkpointer: names used twice: {sorted(clash)}")

    def save(self, step: int, loop_state: Mapping[str, Any]) -> Path:
        """Write checkpoint ``step`` (collective); ``loop_state``: what the loop itself resumes (timings)."""
        reserved = loop_state.keys() & self.shared.keys()
        if reserved:
            raise ValueError(f"checkpointer: loop state keys {sorted(reserved)} are names of stateful objects")
        # Every object's state is taken before DeepSpeed writes, as the loop always did.
        state = {**loop_state, "step": step, **{name: obj.state_dict() for name, obj in self.shared.items()}}
        extra = {name: obj.state_dict() for name, obj in self.per_rank.items()}
        return save(self.engines, self.root, step, state, self.info, self.keep, rank_extra=extra)

    def load(self) -> Restored | None:
        """Restore the newest usable checkpoint into the engines, the RNG and every named object (collective);
        None for a fresh start. Raises ``CheckpointError`` when there are checkpoints but none loads."""
        newest = latest(self.root)
        if newest is None:
            return None
        loaded = load(self.engines, newest, self.info)
        resized = loaded.written_by != self.info.world_size
        if resized:
            on_main_then_shared(lambda: elastic.remove_conversion(loaded.path))  # every rank has loaded it
        per_rank = self._regrouped(loaded) if resized else loaded.rank_extra
        names = []
        for table, saved in ((self.shared, loaded.state), (self.per_rank, per_rank)):
            for name, obj in table.items():
                if name in saved:
                    obj.load_state_dict(saved[name])
                    names.append(name)
        loop_state = {k: v for k, v in loaded.state.items() if k not in self.shared}
        return Restored(loaded.path, int(loop_state["step"]), loop_state, tuple(names),
                        loaded.written_by if resized else None)

    def _regrouped(self, loaded: Loaded) -> dict[str, Any]:
        """This rank's per-rank objects after a re-split: each owner merges every old rank's state."""
        old = loaded.rank_extra[OLD_RANKS]
        try:
            return {name: elastic.regroup(obj, name, [s[name] for s in old])
                    for name, obj in self.per_rank.items() if all(name in s for s in old)}
        except elastic.CannotRegroup as err:
            raise CheckpointError(f"{loaded.path} was written by {loaded.written_by} process(es) and this run has "
                                  f"{self.info.world_size}: {err}") from None
