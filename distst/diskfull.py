"""A write that ran out of space: one line naming the file and the full filesystem, and the requeue exit code.

torch.save's zip writer reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc:672] .
unexpected pos ...``, with neither errno nor file name. Writing through a Python file object (``save_torch``)
keeps the ``OSError`` behind it as the RuntimeError's context, so ``full`` finds ENOSPC, EDQUOT or EFBIG (a
file-size limit) there; for a RuntimeError of torch's writer without one, the free space of the file's
filesystem and the process's file-size limit decide. ``DiskFull`` exits with ``EXIT_REQUEUE`` (75): nothing
is wrong with the run, a re-run after space is freed resumes it (Slurm's requeue stays capped by the batch
script: slurm/distst_job.sh).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DiststError
from .stop import EXIT_REQUEUE

#: What each errno means in the message.
FULL_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EFBIG: "file too large"}
#: Below this many free bytes a write failure of torch's writer without an errno counts as a full disk.
LOW_SPACE = 1 << 20
_TORCH_WRITER = ("inline_container", "PytorchStreamWriter", "unexpected pos", "file write failed")


class DiskFull(DiststError):
    """A file could not be written for lack of space (or a quota, or a file-size limit); the message names the
    file and its filesystem. Exit code 75: free space, then re-run (a training run resumes)."""

    exit_code = EXIT_REQUEUE

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        #: What ran out, naming the file and filesystem (``describe``), for callers that say what to do instead.
        self.detail = detail or message


def _errno(err: BaseException) -> int | None:
    """The errno of ``err`` or of the OSError it was raised from or while handling (torch's writer)."""
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    return None


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_point(path: str | Path) -> Path:
    """The mount point of the filesystem that holds ``path`` (or would hold it)."""
    path = _existing(Path(path))
    while not os.path.ismount(path):
        path = path.parent
    return path


def _fs_type(mount: Path) -> str | None:
    found = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[1].replace("\\040", " ") == str(mount):
                found = fields[2]  # the last such line is the mount on top
    return found


def _file_size_limit() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _why(err: BaseException, path: Path) -> int | None:
    """The errno that makes ``err`` (writing ``path``) a full disk, or None when it is some other failure."""
    code = _errno(err)
    if code is not None:
        return code if code in FULL_ERRNOS else None
    if not (isinstance(err, RuntimeError) and any(mark in str(err) for mark in _TORCH_WRITER)):
        return None
    limit = _file_size_limit()
    with contextlib.suppress(OSError):
        if limit is not None and path.stat().st_size >= limit:
            return errno.EFBIG
    return errno.ENOSPC if shutil.disk_usage(_existing(path)).free < LOW_SPACE else None


def describe(err: BaseException, path: str | Path) -> str | None:
    """``"no space left on device writing PATH (filesystem /scratch, lustre: 0 bytes free of 1.2 TB)"`` when
    ``err``, raised writing ``path``, is a full disk (quota, file-size limit); None for any other failure.
    Call it before the partial file is removed: the free space is the evidence."""
    path = Path(path)
    code = _why(err, path)
    if code is None:
        return None
    mount = mount_point(path)
    usage = shutil.disk_usage(_existing(path))
    kind = _fs_type(mount)
    where = f"filesystem {mount}{f', {kind}' if kind else ''}: {usage.free:,} bytes free of {_size(usage.total)}"
    limit = _file_size_limit()
    if code == errno.EFBIG and limit is not None:
        where += f"; this process's file-size limit (ulimit -f) is {limit:,} bytes"
    return f"{FULL_ERRNOS[code]} writing {path} ({where})"


def _size(n: int) -> str:
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:,} bytes"


@contextlib.contextmanager
def writing(path: str | Path, partial: str | Path | None = None, then: str = "") -> Iterator[None]:
    """Turn a full disk while writing ``path`` into ``DiskFull`` (``then``: what the user does next), removing
    ``partial`` (the staged file) on any failure; other errors pass unchanged."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        found = describe(err, partial or path)
        if partial is not None:
            with contextlib.suppress(OSError):
                Path(partial).unlink(missing_ok=True)
        if found is None:
            raise
        if partial is not None:
            found = found.replace(str(partial), str(path))  # the user knows the file, not its staging name
        then = then or f"{Path(path).name} was not written (an earlier one is left as it was): free space and run again"
        raise DiskFull(f"{found}; {then}", found) from None


def save_torch(obj: Any, path: str | Path, **options: Any) -> None:
    """``torch.save`` through a Python file object, so a full disk keeps its errno (see the module docstring)."""
    import torch

    with open(path, "wb") as file:
        torch.save(obj, file, **options)
