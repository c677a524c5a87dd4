"""A full disk writing a model file or a summary: one line naming the file and the filesystem, exit code 75,
no staged file left, the earlier file unchanged (``distst.diskfull``, ``distst.atomic``, ``RunDir``)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from distst.cli import exit_code
from distst.config import model_section
from distst.diskfull import DiskFull, describe
from distst.models import build
from distst.rundir import RunDir
from distst.stop import EXIT_REQUEUE

if TYPE_CHECKING:
    from space_fixtures import Space

pytest_plugins = ["space_fixtures"]


def short_of_space(space: Space, room: int) -> None:
    """Leave ``room`` bytes for what is written next (a tmpfs: free space; else a file-size limit)."""
    if space.mounted:
        space.resize(space.used() + room)
    else:
        space.limit = room


def expected_start(space: Space, path: Path) -> str:
    if space.mounted:
        return f"no space left on device writing {path} (filesystem {space.root}, tmpfs: "
    return f"file too large writing {path} (filesystem "


def test_a_full_disk_writing_model_pt_names_the_file_and_filesystem_and_keeps_the_earlier_one(space: Space) -> None:
    model = build(model_section(name="adain", width=0.125))
    run = RunDir(space.root / "run")
    run.write_model(model, model.state_dict(), step=2)  # the earlier file, written with room to spare
    earlier = (run.path / "model.pt").read_bytes()
    short_of_space(space, 64 << 10)  # a model file of this width is about 450 kB

    with space.limited(), pytest.raises(DiskFull) as caught:
        run.write_model(model, {k: v + 1 for k, v in model.state_dict().items()}, step=4)
    message = str(caught.value)
    assert message.startswith(expected_start(space, run.path / "model.pt")), message
    assert "bytes free of" in message and "\n" not in message
    assert "model.pt was not written (the run's checkpoints are intact): free space, then re-run" in message
    if not space.mounted:
        assert "this process's file-size limit (ulimit -f) is 65,536 bytes" in message
    assert exit_code(caught.value) == EXIT_REQUEUE == 75
    assert sorted(p.name for p in run.path.iterdir()) == ["model.pt"]  # no model.pt.tmp left
    assert (run.path / "model.pt").read_bytes() == earlier


def test_a_full_disk_writing_summary_json_is_one_line_and_leaves_no_staged_file(space: Space) -> None:
    run = RunDir(space.root / "run")
    run.path.mkdir()
    short_of_space(space, 16 << 10)
    with space.limited(), pytest.raises(DiskFull) as caught:
        run.write_summary({"steps": 4, "final": {"total_error": 1.0}, "padding": "x" * (200 << 10)})
    assert str(caught.value).startswith(expected_start(space, run.path / "summary.json")), str(caught.value)
    assert "summary.json was not written" in str(caught.value)
    assert caught.value.exit_code == EXIT_REQUEUE
    assert list(run.path.iterdir()) == []


def test_torch_writers_full_disk_without_an_errno_is_still_recognised(space: Space) -> None:
    # torch.save given a path writes through its own C++ stream: a RuntimeError with no errno and no file
    # name; the free space (or the file-size limit reached) tells a full disk from other failures.
    target = space.root / "x.pt"
    short_of_space(space, 64 << 10)
    with space.limited(), pytest.raises(RuntimeError) as caught:
        torch.save({"w": torch.zeros(100_000)}, target)
    with space.limited():
        found = describe(caught.value, target)
    assert found is not None and found.startswith(expected_start(space, target)), found
    assert describe(RuntimeError("some other failure"), target) is None
    assert describe(PermissionError(errno.EACCES, "Permission denied"), target) is None
    assert describe(OSError(errno.EDQUOT, "Disk quota exceeded"), target).startswith(
        f"disk quota exceeded writing {target} (filesystem ")
