"""Running out of space for real: a small tmpfs where this machine lets us mount one (root), else a file-size
limit (``RLIMIT_FSIZE`` with SIGXFSZ ignored, so a write past it fails with EFBIG as a full disk does).

``Space`` says which: ``mounted`` (a tmpfs at ``root``: ``resize`` sets its size, ``free`` reads it) or not
(``root`` is a plain directory: ``limit`` sets a file-size limit for processes started with ``preexec``, or for
this one inside ``limited()``). ``DISTST_TEST_NO_MOUNT=1`` takes the second way on a machine that could mount.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


class Space:
    def __init__(self, root: Path, mounted: bool) -> None:
        self.root, self.mounted = root, mounted
        self.limit: int | None = None  # the file-size limit without a mount

    def used(self) -> int:
        usage = shutil.disk_usage(self.root)
        return usage.total - usage.free

    def free(self) -> int:
        return shutil.disk_usage(self.root).free

    def resize(self, size: int) -> None:
        """The tmpfs's size in bytes (rounded up to whole pages); what it holds stays."""
        page = os.sysconf("SC_PAGE_SIZE")
        subprocess.run(["mount", "-o", f"remount,size={-(-size // page) * page}", str(self.root)], check=True,
                       capture_output=True, timeout=30)

    def preexec(self) -> Callable[[], None] | None:
        """For ``subprocess``: the file-size limit in the child (None: no limit set, or a mount)."""
        limit = self.limit
        if self.mounted or limit is None:
            return None

        def apply() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # inherited across exec: EFBIG instead of a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

        return apply

    @contextlib.contextmanager
    def limited(self) -> Iterator[None]:
        """This process under the file-size limit for the block (nothing to do on a mount)."""
        if self.mounted or self.limit is None:
            yield
            return
        previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        previous = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, previous[1]))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, previous)
            signal.signal(signal.SIGXFSZ, previous_handler)


def _mount(root: Path, size: int) -> bool:
    if os.environ.get("DISTST_TEST_NO_MOUNT") == "1" or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(root)],
                          capture_output=True, timeout=30)
    return done.returncode == 0 and os.path.ismount(root)


@pytest.fixture
def space(tmp_path: Path) -> Iterator[Space]:
    """A 64 MiB tmpfs (resize it), or a plain directory where mounting is not allowed (set ``limit``)."""
    root = tmp_path / "fs"
    root.mkdir()
    mounted = _mount(root, 64 << 20)
    try:
        yield Space(root, mounted)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root)], capture_output=True, timeout=30)
