"""How the launcher reads an attempt's end from its status directory (a hang, a rank's death, a worker's own
error), what counts as progress, and its option. With real torchrun processes: tests/integration/
test_launch_restarts.py, test_rank_faults.py, test_launch_signals.py."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from distst.commands.launch import add_job_arguments
from distst.launcher import Ended, WorkerStatus, checkpoints
from distst.stop import EXIT_REQUEUE


@pytest.fixture
def status(tmp_path: Path) -> WorkerStatus:
    for rank in range(3):
        (tmp_path / f"rank{rank}.pid").write_text(str(100 + rank))
    return WorkerStatus(tmp_path)


def test_a_hang_ends_the_attempt_with_its_line_and_75(status: WorkerStatus) -> None:
    status.hung(2, "distst: rank 2 made no progress at step 9 ...")
    status.hung(0, "distst: rank 0 waited 600 s ...")  # found later: the first line is the one said
    assert status.outcome(3, 1, ended_by_us={1}) == Ended(EXIT_REQUEUE, line="distst: rank 2 made no progress at "
                                                                             "step 9 ...")


def test_a_rank_without_an_exit_code_died_and_torchruns_own_sigterm_is_no_root_cause(status: WorkerStatus) -> None:
    status.exited(2, EXIT_REQUEUE)  # a survivor that lost its peer
    status.torchrun_saw({0: -15, 1: -9})
    assert status.outcome(3, 1) == Ended(1, died="distst: rank 1 died (killed by SIGKILL)")
    status.torchrun_saw({0: -15, 1: -6})
    assert status.outcome(3, 1).died == "distst: rank 1 died (killed by SIGABRT)"
    status.torchrun_saw({})
    assert status.outcome(3, 1).died == "distst: rank 0 died (torchrun gave no exit code)"
    status.torchrun_saw({0: -15, 1: 3})  # exited by itself before recording its code (an import failed): no restart
    assert status.outcome(3, 1) == Ended(3, line="distst: rank 1 exited with code 3 before it could record it (its "
                                                 "own output above says why)")


def test_a_workers_own_error_is_no_death_to_restart(status: WorkerStatus) -> None:
    status.exited(0, 2)  # a user error on rank 0; torchrun then ended the others
    status.torchrun_saw({0: 2, 1: -15, 2: -15})
    assert status.outcome(3, 1) == Ended(2)
    for rank in range(3):
        status.exited(rank, EXIT_REQUEUE)
    assert status.outcome(3, 0) == Ended(EXIT_REQUEUE)  # a stop every worker agrees on


def test_new_checkpoints_are_progress_whatever_their_name(tmp_path: Path) -> None:
    assert checkpoints(None) == set() and checkpoints(tmp_path / "missing") == set()
    (tmp_path / "checkpoints" / "step_00000002").mkdir(parents=True)
    (tmp_path / "level_1" / "checkpoints" / "step_00000004").mkdir(parents=True)
    (tmp_path / "level_1" / "checkpoints" / "step_00000006.tmp").mkdir(parents=True)  # a save under way
    before = checkpoints(tmp_path)
    assert sorted(Path(p).name for _, p in before) == ["step_00000002", "step_00000004"]
    shutil.rmtree(tmp_path / "checkpoints" / "step_00000002")  # rotated out
    assert checkpoints(tmp_path) < before
    (tmp_path / "level_1" / "checkpoints" / "step_00000006.tmp").rename(tmp_path / "level_1" / "checkpoints" /
                                                                        "step_00000006")
    assert checkpoints(tmp_path) - before  # a new one: progress


def test_max_restarts_option() -> None:
    parser = argparse.ArgumentParser()
    add_job_arguments(parser, "train.lr=1")
    assert parser.parse_args(["job.yaml"]).max_restarts == 3
    assert parser.parse_args(["job.yaml", "--max-restarts", "0"]).max_restarts == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["job.yaml", "--max-restarts", "-1"])
