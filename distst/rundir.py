"""One run per run directory, and one config per run.

**The lock.** A command that trains takes ``<run dir>/.distst-lock.json`` (holder's host, PID, process start
time and command line). A second command on the same directory refuses with one line naming the holder. A
lock left by a process that no longer runs on this host (a SIGKILL, a node crash) is taken over with a
message; one held from another host is never taken over (its process cannot be seen from here). Ranks of one
run share the lock: rank 0 takes it and tells the others. Within a process the lock is re-entrant, also for
subdirectories: ``distst imp`` locks the run directory once and each level's ``train()`` runs inside it.

**The config.** Resuming a run directory with another config would mix settings in one record. At resume the
resolved config is compared with the stored ``config.yaml``; any change is refused with the list of changed
keys, except those in ``SAFE_ON_RESUME`` (how long to train and how often to log, evaluate and keep
checkpoints; tracking; where the run is written), which are returned so the trainer records them.

**The inputs.** Weight files, ``model.init_from`` and shards are the run's by content, not by path
(``distst.data.checksums``): each run records their sha256 in ``inputs.json`` beside ``config.yaml``. At resume a
path may change (the files moved to another file system): it is a safe change when the content is the same,
and refused, naming the key, when the content differs (also under an unchanged path).

``RunDir`` is what the trainer holds: the lock, the resume check, and the files it writes (``config.yaml``,
``inputs.json``, ``summary.json``, ``model.pt``; rank 0 writes, the other ranks skip). The outputs of an earlier
finish are removed before training goes on past it (``distst.outputs``); a full disk writing them stops every
rank with one line (``distst.diskfull``, exit code 75).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from . import atomic, outputs
from .config import Config, ConfigError
from .data import checksums
from .diskfull import DiskFull
from .distributed import on_main_then_shared, rank
from .errors import UserError

LOCK_FILE = ".distst-lock.json"
INPUTS_FILE = "inputs.json"  # {key: {"path", "sha256"}} of the run's weight files and shards, beside config.yaml

#: Keys that may change when a run is resumed: none of them changes what a step computes or which data it
#: sees (a run has one data stream, continued from its position at every checkpoint, whatever the interval).
SAFE_ON_RESUME = ("train.steps", "train.checkpoint_every", "train.eval_every", "train.log_every",
                  "train.keep_checkpoints", "train.collective_timeout", "train.hang_factor", "train.hang_min_s",
                  "tracking.*", "run.*")


class RunDirBusy(UserError):
    """Another live process holds the run directory's lock."""


# --- the lock -----------------------------------------------------------------------------------------------

def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a reused PID apart), None where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text.rsplit(")", 1)[1].split()[19])


def _process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _alive(pid: int, started: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    if _process_state(pid) == "Z":  # killed, not yet reaped by its parent
        return False
    now = _process_start(pid)
    return started is None or now is None or now == started


def this_process() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": _process_start(pid),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv)}


def describe(holder: dict[str, Any]) -> str:
    return f"{holder.get('host', '?')} pid {holder.get('pid', '?')} (since {holder.get('since', '?')})"


def _short(command: str, limit: int = 100) -> str:
    return command if len(command) <= limit else command[: limit - 3] + "..."


def _same_process(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("host", "pid", "started"))


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # torn or foreign: treated as a stale lock of an unknown holder
    return holder if isinstance(holder, dict) else {}


def _stale(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return not holder  # another host's process cannot be checked from here; an unreadable lock is stale
    return not _alive(int(holder.get("pid", -1)), holder.get("started"))


@contextlib.contextmanager
def _guard(run_dir: Path) -> Iterator[None]:
    """Serialises lock decisions of processes on this host (an flock on the directory; best effort on file
    systems without flock, where the hard-link creation below is still atomic)."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _write_lock(path: Path, me: dict[str, Any], replace: bool) -> bool:
    """Write our lock; without ``replace`` only if there is none (hard link: atomic, also over NFS)."""
    staged = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    staged.write_text(json.dumps(me) + "\n")
    try:
        if replace:
            os.replace(staged, path)
            return True
        try:
            os.link(staged, path)
            return True
        except FileExistsError:
            return False
    finally:
        staged.unlink(missing_ok=True)


def acquire(run_dir: Path) -> None:
    """Take ``run_dir``'s lock for this process, taking over a stale one; raises ``RunDirBusy`` when held."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    me = this_process()
    with _guard(run_dir):
        for _ in range(3):  # a holder may vanish between our read and our write
            if _write_lock(path, me, replace=False):
                return
            holder = _read_holder(path)
            if holder is None:
                continue
            if _same_process(holder, me):
                return
            if not _stale(holder):
                raise RunDirBusy(f"run directory {run_dir} is in use by {describe(holder)}, running "
                                 f"{_short(holder.get('command', '?'))!r}; wait for it, or stop it first")
            print(f"distst: taking over the lock of {run_dir} from {describe(holder)}, which no longer runs",
                  file=sys.stderr, flush=True)
            _write_lock(path, me, replace=True)
            return
    raise RunDirBusy(f"run directory {run_dir}: could not take its lock {path}")


def release(run_dir: Path) -> None:
    """Remove ``run_dir``'s lock if this process holds it."""
    path = run_dir / LOCK_FILE
    if not run_dir.is_dir():
        return
    with _guard(run_dir):
        holder = _read_holder(path)
        if holder and _same_process(holder, this_process()):
            path.unlink(missing_ok=True)


# Directories this process holds, with a count: re-entrant, and covering subdirectories (IMP levels).
_HELD: dict[Path, int] = {}
_HELD_LOCK = threading.Lock()


def _held_by_us(path: Path) -> Path | None:
    return next((p for p in (path, *path.parents) if p in _HELD), None)


@contextlib.contextmanager
def exclusive(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block (rank 0 takes it; every rank learns the outcome; collective when
    a process group is up). Nested use in the same process, also on a subdirectory, is free."""
    key = Path(os.path.abspath(run_dir))
    with _HELD_LOCK:
        outer = _held_by_us(key)
        if outer is not None:
            _HELD[outer] += 1
    if outer is not None:
        try:
            yield
        finally:
            with _HELD_LOCK:
                _HELD[outer] -= 1
        return
    on_main_then_shared(lambda: acquire(key))
    with _HELD_LOCK:
        _HELD[key] = _HELD.get(key, 0) + 1
    try:
        yield
    finally:
        with _HELD_LOCK:
            _HELD[key] -= 1
            last = _HELD[key] == 0
            if last:
                del _HELD[key]
        if last and rank() == 0:
            release(key)


# --- the config at resume -----------------------------------------------------------------------------------

def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{'train': {'lr': 1}}`` -> ``{'train.lr': 1}`` (lists are values)."""
    if not isinstance(tree, dict) or (prefix and not tree):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def safe_on_resume(key: str) -> bool:
    return any(key == safe or (safe.endswith(".*") and key.startswith(safe[:-1])) for safe in SAFE_ON_RESUME)


def _resumable(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds work a rerun continues: a checkpoint or a finished model (any level)."""
    return any(run_dir.glob("checkpoints/step_*")) or (run_dir / "model.pt").is_file() or \
        any(run_dir.glob("level_*/checkpoints/step_*")) or any(run_dir.glob("level_*/model.pt"))


def stored_config(run_dir: Path) -> Path | None:
    """The run's ``config.yaml`` (an IMP run's top-level one, else one of its levels')."""
    for path in (run_dir / "config.yaml", *sorted(run_dir.glob("level_*/config.yaml"))):
        if path.is_file():
            return path
    return None


def config_changes(cfg: Config, run_dir: Path) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs from the stored config of a resumable ``run_dir``: ``{key: (old, new)}``."""
    path = stored_config(run_dir)
    if path is None or not _resumable(run_dir):
        return {}
    try:
        old = flatten(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML ({err}); move {run_dir} away to start over") from None
    new = flatten(cfg.model_dump(mode="json"))
    # A key a later distst added, at its default, is no change: the stored run behaved as that default does.
    set_keys = flatten(cfg.model_dump(mode="json", exclude_defaults=True)).keys()
    missing = object()
    return {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
            if old.get(key, missing) != new.get(key, missing) and (key in old or key in set_keys)}


def _recorded_inputs(run_dir: Path) -> dict[str, Any]:
    """``inputs.json`` beside the stored config (empty for a run from before it was written)."""
    stored = stored_config(run_dir)
    try:
        recorded = json.loads((stored.parent / INPUTS_FILE).read_text()) if stored is not None else {}
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def input_verdicts(cfg: Config, run_dir: Path, changes: dict[str, tuple[Any, Any]]
                   ) -> tuple[set[str], dict[str, str]]:
    """(path keys in ``changes`` whose files hold what they held: moved, safe), and ``{key: why}`` for each
    path key whose content differs from the run's, under a changed path or the same one."""
    recorded = _recorded_inputs(run_dir)
    moved: set[str] = set()
    differ: dict[str, str] = {}
    for key, value in checksums.input_paths(cfg).items():
        now = checksums.checksum(key, value)
        entry = recorded.get(key)
        before = entry.get("sha256") if isinstance(entry, dict) else None
        if before is None and key in changes and isinstance(changes[key][0], str):
            before = checksums.checksum(key, changes[key][0])  # an older run: its files, if still there
        if now is None or before is None:
            continue  # nothing to compare: the paths decide
        if now == before:
            if key in changes:
                moved.add(key)
        else:
            differ[key] = (f"{key} (the content of {value} differs from the run's: sha256 "
                           f"{before.removeprefix(checksums.PREFIX)[:12]} -> {now.removeprefix(checksums.PREFIX)[:12]})")
    return moved, differ


def check_resume(cfg: Config, run_dir: Path) -> dict[str, tuple[Any, Any]]:
    """Refuse a config that differs from the stored one in anything but ``SAFE_ON_RESUME`` keys, or input files
    of other content (one line listing them); returns the safe changes (moved files included), for the
    record. Rank 0 reads, every rank gets the outcome."""

    def decide() -> dict[str, tuple[Any, Any]]:
        changes = config_changes(cfg, run_dir)
        resumable = stored_config(run_dir) is not None and _resumable(run_dir)
        moved, differ = input_verdicts(cfg, run_dir, changes) if resumable else (set(), {})
        refused = [f"{k} ({old!r} -> {new!r})" for k, (old, new) in changes.items()
                   if not safe_on_resume(k) and k not in moved and k not in differ]
        refused += differ.values()
        if refused:
            raise ConfigError(
                f"{run_dir} holds a run of another config; changed: {', '.join(refused)}. Only "
                f"{', '.join(SAFE_ON_RESUME)} and the paths of files with the same content may change on resume: "
                f"choose another run.out_dir (the default one is per config) or move {run_dir} away")
        return changes

    return on_main_then_shared(decide)


def change_record(changes: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    """The ``metrics.jsonl`` row of safe changes at a resume: ``{'config_changed': {key: {'from', 'to'}}}``."""
    return {"config_changed": {k: {"from": old, "to": new} for k, (old, new) in changes.items()}}


# --- the run directory the trainer holds --------------------------------------------------------------------

class RunDir:
    """One run's directory: its lock, the check that a resume continues the same run, and the files a run
    writes there. Writing methods write on rank 0 only (every rank may call them)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the lock for the block (see ``exclusive``)."""
        return exclusive(self.path)

    def check_resume(self, cfg: Config) -> dict[str, tuple[Any, Any]]:
        """Refuse another run's config or other input files; returns the safe changes (``check_resume``)."""
        return check_resume(cfg, self.path)

    def write_config(self, cfg: Config) -> None:
        """``config.yaml`` (the resolved config, paths as given) and ``inputs.json`` (their content's sha256)."""
        if rank() != 0:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.yaml").write_text(cfg.to_yaml())
        recorded = {key: {"path": value, "sha256": checksums.checksum(key, value)}
                    for key, value in checksums.input_paths(cfg).items()}
        atomic.write_json(self.path / INPUTS_FILE, recorded, indent=1)

    def retire_outputs(self, until: int) -> None:
        """Before training goes on to step ``until``: remove the outputs of an earlier finish, so that none is
        ever read as the model of newer checkpoints (``distst.outputs``). Collective; rank 0 removes."""
        on_main_then_shared(lambda: outputs.retire(self.path, until))

    def write_summary(self, summary: dict[str, Any]) -> None:
        """``summary.json``. Collective: a full disk on rank 0 stops every rank with the same line."""
        on_main_then_shared(lambda: self._write(outputs.SUMMARY, lambda path: atomic.write_json(path, summary)))

    def write_model(self, model: Any, state: dict[str, Any], step: int | None = None) -> None:
        """``model.pt``: ``model``'s plan and section with ``state`` (its weights), of training step ``step``.
        Collective, as ``write_summary``."""

        def save(path: Path) -> None:
            from .models.io import save_model  # torch: only when a model is written, the CLI starts light

            save_model(model, path, state=state, step=step)

        on_main_then_shared(lambda: self._write(outputs.MODEL, save))

    def _write(self, name: str, write: Callable[[Path], Any]) -> None:
        try:
            write(self.path / name)
        except DiskFull as err:
            raise DiskFull(f"{err.detail}; {name} was not written (the run's checkpoints are intact): free space, "
                           f"then re-run the training command: it resumes from its last checkpoint and writes "
                           f"{name}", err.detail) from None
