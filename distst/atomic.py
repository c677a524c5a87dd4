"""Writes that a kill or a power cut can never leave half done: write a sibling temporary file, flush it to
disk, rename it over the target, then flush the directory that holds the new name.

A rename within one directory is atomic on POSIX file systems (and on the shared file systems clusters use
for run directories), so readers see the old file or the new one, never a torn one. Without the two fsyncs a
crash shortly after the rename can still leave an empty file under the new name (the rename reached the disk
before the data) or the old name (the directory entry never did).

A full disk (or quota, or file-size limit) raises ``distst.diskfull.DiskFull`` naming the file and its
filesystem; the staged file is removed and the old file, if any, is left as it was.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from .diskfull import save_torch, writing

# Some file systems cannot fsync a directory; the rename is still atomic there, only not yet durable.
_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES}


def _staging(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + ".tmp")


def fsync_file(path: str | Path) -> int:
    """Flush ``path``'s data to disk; returns its size (read from the open file, fresh even over NFS)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk, where the file system allows it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        if err.errno in _DIR_FSYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def replace(staged: str | Path, path: str | Path) -> Path:
    """Make the finished file ``staged`` durable and rename it to ``path`` (same directory), durably."""
    path = Path(path)
    fsync_file(staged)
    os.replace(staged, path)
    fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = _staging(path)
    with writing(path, partial=tmp):
        tmp.write_text(text)
        return replace(tmp, path)


def write_json(path: str | Path, data: Any, indent: int = 2) -> Path:
    return write_text(path, json.dumps(data, indent=indent) + "\n")


def torch_save(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    tmp = _staging(path)
    with writing(path, partial=tmp):
        save_torch(obj, tmp)
        return replace(tmp, path)
