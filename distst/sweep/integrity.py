"""A keyed, sealed copy of Ray Tune's driver state, so ``--resume`` unpickles only what this user's distst wrote.

``Tuner.restore`` unpickles ``tuner.pkl``, the ``experiment_state-*.json`` files (cloudpickled trials) and the
searcher's state; the results unpickle a trial's ``error.pkl``: a sweep folder written by someone else would
run their code. So the driver keeps ``<sweep dir>/tune.sealed.json``: a copy of those driver files (the top level
of ``<sweep dir>/tune``) with an HMAC-SHA256 over them under a per-user key kept outside the sweep folder. It is
rewritten, atomically, whenever Tune has saved its state (a callback at the end of each controller step, where
the save has finished: Tune's upload to the sweep folder is asynchronous, so the copy is taken from the driver's
own staging folder) and when ``fit`` returns. A driver killed outright therefore leaves a copy at most one save
old. ``--resume`` verifies the copy, then puts exactly it back as the top level of ``tune/`` and removes every
other pickle below it, before Ray reads anything: nothing unsealed is ever unpickled.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ..errors import UserError

KEY_BYTES = 32
SEALED_SUFFIX = ".sealed.json"
SEAL_VERSION = 1

_REFUSE = ("was not written by this user's distst sweep (no copy sealed with {key} matches): refusing to "
           "unpickle its Tune state; move the sweep folder away or start a new sweep with another --out")


class SweepKeyError(UserError):
    """The per-user sweep key cannot be used (readable by others, wrong size, not this user's)."""


class SweepStateTampered(UserError):
    """The sweep's Tune state does not match its seal: nothing of it is unpickled."""


def key_path() -> Path:
    """``$DISTST_KEY_FILE``, else ``$XDG_CONFIG_HOME/distst/sweep.key`` (``~/.config/distst/sweep.key``)."""
    if os.environ.get("DISTST_KEY_FILE"):
        return Path(os.environ["DISTST_KEY_FILE"]).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config).expanduser() / "distst" / "sweep.key"


def load_key(path: Path | None = None) -> bytes:
    """The key at ``path`` (default :func:`key_path`), created (32 random bytes, mode 0600) on first use."""
    path = path or key_path()
    if not path.exists() and not path.is_symlink():
        _create_key(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        raise SweepKeyError(f"sweep key {path}: cannot read it ({err.strerror or err})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SweepKeyError(f"sweep key {path} is not a regular file: refusing it")
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise SweepKeyError(f"sweep key {path} belongs to another user (uid {info.st_uid}): refusing it")
        if info.st_mode & 0o077:
            raise SweepKeyError(f"sweep key {path} is readable or writable by others (mode "
                                f"{stat.S_IMODE(info.st_mode):04o}): refusing it; `chmod 600 {path}` if only you "
                                "ever had it, else delete it (sweeps sealed with it can no longer be resumed)")
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise SweepKeyError(f"sweep key {path} holds {len(key)} bytes, not {KEY_BYTES}: refusing it")
    return key


def _create_key(path: Path) -> None:
    """Write a new key atomically; an existing key (another process's, created meanwhile) is never replaced."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if a key appeared meanwhile: that one is kept
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not path.exists():
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sealed_path(state_dir: Path) -> Path:
    """``<sweep dir>/tune.sealed.json`` for the state folder ``<sweep dir>/tune``."""
    return state_dir.parent / f"{state_dir.name}{SEALED_SUFFIX}"


def driver_files(folder: Path) -> dict[str, bytes]:
    """The regular files at the top level of a Tune state (or staging) folder: Tune's driver state.

    Temporary files of an unfinished atomic save (``tmp-*``, hidden files) are not state; trial folders are
    below the top level.
    """
    found: dict[str, bytes] = {}
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and not path.is_symlink() and not path.name.startswith(("tmp-", ".")):
            found[path.name] = path.read_bytes()
    return found


def _body(files: dict[str, bytes]) -> bytes:
    encoded = {name: base64.b64encode(data).decode() for name, data in sorted(files.items())}
    return json.dumps({"version": SEAL_VERSION, "files": encoded}, sort_keys=True, separators=(",", ":")).encode()


def seal(state_dir: Path, files: dict[str, bytes]) -> Path:
    """Write the sealed copy of ``files`` (name -> bytes) for ``state_dir`` atomically; returns its path."""
    key = load_key()
    body = _body(files)
    target = sealed_path(state_dir)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    record = {"key_file": str(key_path()), "hmac": hmac.new(key, body, hashlib.sha256).hexdigest(),
              "body": body.decode()}
    with tmp.open("w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return target


def sealed_files(state_dir: Path) -> dict[str, bytes]:
    """The driver files of the sealed copy, after its HMAC was checked with this user's key; reads bytes only."""
    key = load_key()
    refuse = _REFUSE.format(key=key_path())
    target = sealed_path(state_dir)
    try:
        record = json.loads(target.read_text())
        body, mac = record["body"].encode(), record["hmac"]
        if not isinstance(mac, str):
            raise TypeError
    except FileNotFoundError:
        raise SweepStateTampered(f"{state_dir} has no sealed copy ({target}), so it {refuse}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise SweepStateTampered(f"{target} is not a distst seal, so {state_dir} {refuse}") from None
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).hexdigest(), mac):
        raise SweepStateTampered(f"{state_dir} {refuse}")
    content = json.loads(body)
    return {name: base64.b64decode(data) for name, data in content["files"].items()}


def restore_sealed(state_dir: Path) -> list[str]:
    """Make ``state_dir`` hold only sealed driver state before Tune reads it; returns the files put back.

    The top level becomes exactly the sealed copy (whatever else is there, newer or planted, goes), and every
    pickle below it (a trial's ``error.pkl``, ``params.pkl``: not sealed, never needed to resume) is removed.
    Raises :class:`SweepStateTampered` (nothing changed) when there is no sealed copy this user's key made.
    """
    files = sealed_files(state_dir)
    for name in files:
        if Path(name).name != name or name.startswith("."):
            raise SweepStateTampered(f"{sealed_path(state_dir)} names a file outside its folder ({name!r})")
    for path in state_dir.iterdir():
        if path.is_symlink() or path.is_file():
            path.unlink()
    for path in state_dir.rglob("*.pkl"):
        if path.is_file() or path.is_symlink():
            path.unlink()
    for name, data in files.items():
        (state_dir / name).write_bytes(data)
    return sorted(files)


class SealDriverState(Callback):
    """Tune callback: after each controller step, reseal the driver state if Tune saved a new one.

    ``on_step_end`` runs in the driver's thread after the step's save (``TuneController.checkpoint``) has
    written the driver files to the staging folder; the staging folder, not the sweep folder, is read because
    Tune uploads to the latter in the background. ``tuner.pkl`` is written once, straight to the sweep folder.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self._last: bytes | None = None
        self.seals = 0

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if not trials:
            return
        staging = Path(trials[0].storage.experiment_driver_staging_path)
        if not staging.is_dir() or not (self.state_dir / "tuner.pkl").is_file():
            return
        files = {"tuner.pkl": (self.state_dir / "tuner.pkl").read_bytes(), **driver_files(staging)}
        body = _body(files)
        if body != self._last and any(name.startswith("experiment_state-") for name in files):
            seal(self.state_dir, files)
            self._last, self.seals = body, self.seals + 1

    def seal_saved_state(self) -> None:
        """After ``fit`` returned (Tune waited for its last upload): seal the sweep folder's own driver files."""
        if self.state_dir.is_dir():
            seal(self.state_dir, driver_files(self.state_dir))
