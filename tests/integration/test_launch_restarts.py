"""The launcher's restarts in place, with real torchrun processes and real SIGKILLs but a tiny worker (no torch):
a rank that dies is named in one line per restart, at most ``max_restarts`` times; then one line and exit 75
when the launch wrote new checkpoints (a requeue resumes further on), else 1 (a requeue would repeat the work).
The same with the trainer, ending bitwise equal: test_rank_faults.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from distst.launcher import LOG_NAME, Launch
from distst.stop import EXIT_REQUEUE

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

#: Each rank announces itself; rank 0 writes a checkpoint when asked to (progress), then rank 1 dies of SIGKILL.
#: Rank 0 waits to be ended by torchrun: a survivor.
WORKER = """
import os, signal, sys, time
from pathlib import Path
from distst.launcher import STATUS_DIR_ENV, WorkerStatus

rank, status = int(os.environ["RANK"]), WorkerStatus(Path(os.environ[STATUS_DIR_ENV]))
status.ready(rank)
run_dir, progress = Path(sys.argv[1]), sys.argv[2] == "progress"
go = status.folder / "go"
if rank == 0:
    if progress:
        saved = len(list(run_dir.glob("checkpoints/step_*")))
        (run_dir / "checkpoints" / f"step_{saved + 1:08d}").mkdir(parents=True)
    go.touch()
    while True:
        time.sleep(0.1)
while not go.exists():
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)  # this process's world of one is not the workers'
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    path = tmp_path / "worker.py"
    path.write_text(WORKER)
    return path


def launched(worker: Path, run_dir: Path, progress: bool, max_restarts: int) -> Launch:
    argv = [str(worker), str(run_dir), "progress" if progress else "none"]  # torchrun runs it with this Python
    return Launch(argv, 2, run_dir / LOG_NAME, run_dir, max_restarts=max_restarts)


def distst_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("distst: ")]


def test_a_rank_that_keeps_dying_is_restarted_max_restarts_times_then_75_after_progress(
        worker: Path, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    assert launched(worker, run_dir, progress=True, max_restarts=2).run() == EXIT_REQUEUE
    log = run_dir / LOG_NAME
    assert distst_lines(capfd.readouterr().err) == [
        f"distst: rank 1 died (killed by SIGKILL); restarting the 2 workers from the last checkpoint (restart 1 of at "
        f"most 2; torchrun's log: {log})",
        f"distst: rank 1 died (killed by SIGKILL); restarting the 2 workers from the last checkpoint (restart 2 of at "
        f"most 2; torchrun's log: {log})",
        "distst: rank 1 died (killed by SIGKILL) and the 2 restart(s) in place are spent (--max-restarts): exit 75 for "
        f"a requeue from the last checkpoint (this launch wrote new checkpoints); torchrun's log: {log}",
    ]
    assert len(list((run_dir / "checkpoints").glob("step_*"))) == 3  # one per attempt
    assert log.read_text().count("ChildFailedError:") == 3  # torchrun's report of each attempt, in its log


def test_no_restart_and_no_new_checkpoint_exits_1(worker: Path, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    assert launched(worker, run_dir, progress=False, max_restarts=0).run() == 1
    assert distst_lines(capfd.readouterr().err) == [
        "distst: rank 1 died (killed by SIGKILL) (restarts in place are off: --max-restarts 0): exit 1: no new "
        f"checkpoint since the launch began, a requeue would repeat the same work; torchrun's log: {run_dir / LOG_NAME}"
    ]
