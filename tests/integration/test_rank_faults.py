"""Faults a cluster really has, under ``distst train --nproc 2``: a rank SIGKILLed mid-run is named in one line and
the group restarts in place from the last checkpoint, ending bitwise equal to an uninterrupted run; a SIGSTOPped
rank (a hang) is found by the step watchdog, or by the collective timeout, and the job ends with one line and exit
75, and the rerun resumes to the same end. (When the restarts are spent: test_launch_restarts.py.)

Real torchrun/gloo processes and real signals; every wait is on an event (a checkpoint on disk, the launcher's
exit), under a generous cap.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, distst_command, patience, subprocess_env, tiny_overrides, write_job

from distst.launcher import LOG_NAME
from distst.track import read_metrics
from distst.train import EXIT_REQUEUE

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

STEPS = 40  # checkpoints every 10 steps: after one, a signal lands
#: Values that depend on the machine's speed, not on what was computed.
TIMING = ("images_per_s", "images_per_s_per_process")


def overrides(run: Path, **extra: object) -> list[str]:
    return tiny_overrides(run, train__steps=STEPS, train__checkpoint_every=10, train__eval_every=10,
                          train__deterministic="true", **extra)


def launch(job: Path, run: Path, log: Path, *options: str, **extra: object) -> subprocess.Popen:
    with log.open("w") as sink:  # a file, not a pipe: two workers' logs could fill a pipe and block them
        return subprocess.Popen(distst_command("train", str(job), "--nproc", "2", *options, *overrides(run, **extra)),
                                cwd=REPO, env=subprocess_env(), stdout=sink, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path, timeout: float = patience(240)) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"still running after {timeout} s:\n{output(log)[-3000:]}") from None


def output(log: Path) -> str:
    return log.read_text().replace("\r", "\n")  # progress bars end in \r: a line printed after one starts anew


def wait_for_file(path: Path, proc: subprocess.Popen, log: Path, timeout: float = patience(180)) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"ended early ({proc.returncode}):\n{output(log)[-3000:]}"
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {path} after {timeout} s:\n{output(log)[-3000:]}")
        time.sleep(0.05)


def wait_for_step(run: Path, step: int, proc: subprocess.Popen, log: Path, timeout: float = patience(180)) -> None:
    """Until rank 0 has logged ``step``: the ranks are then in the steps after it, not in an evaluation or a
    checkpoint (none falls on them), where a hang is the collective timeout's to find, not the watchdog's."""
    deadline = time.monotonic() + timeout
    while not any(row.get("step") == step and "loss" in row for row in read_metrics(run / "metrics.jsonl")):
        assert proc.poll() is None, f"ended early ({proc.returncode}):\n{output(log)[-3000:]}"
        assert time.monotonic() < deadline, f"step {step} not logged after {timeout} s:\n{output(log)[-3000:]}"
        time.sleep(0.05)


def worker_pid(launcher: int, rank: int) -> int:
    """The PID of the torchrun worker of ``rank`` under the launcher process (torchrun is its child)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
    torchrun = [pid for pid, parent in parents.items() if parent == launcher]
    for pid, parent in parents.items():
        if parent in torchrun:
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return pid
    raise AssertionError(f"no worker of rank {rank} under {launcher}")


def lines_with(text: str, log: Path) -> list[str]:
    return [line[line.index(text):] for line in output(log).splitlines() if text in line]


def newest_checkpoint(run: Path) -> int:
    return max(int(p.name.split("_")[1]) for p in (run / "checkpoints").glob("step_*") if not p.name.endswith(".tmp"))


def rows(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_metrics(run / "metrics.jsonl")]


def assert_same_results(run: Path, clean: Path) -> None:
    import json

    assert rows(run) == rows(clean), "metrics.jsonl differs from the uninterrupted run's (a row twice, or lost)"
    assert json.loads((run / "summary.json").read_text())["final"] == \
        json.loads((clean / "summary.json").read_text())["final"]
    first = torch.load(clean / "model.pt", weights_only=True)["state_dict"]
    again = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first), "weights differ from the uninterrupted run's"


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-process run: what every faulted run must end as."""
    root = tmp_path_factory.mktemp("clean")
    run, log = root / "run", root / "launch.log"
    proc = launch(write_job(root / "job.yaml"), run, log)
    assert finish(proc, log) == 0, output(log)[-3000:]
    return run


HANG_LINE = re.compile(r"distst: rank 0 made no progress at step (\d+) for (\d+) s \(median step [0-9.e-]+ s\): "
                       r"ending the job for a requeue from the last checkpoint \(step (\d+)\)")
TIMEOUT_LINE = re.compile(r"distst: rank 0 waited 8 s \(train.collective_timeout\) for another rank in a collective "
                          r"at step (\d+): ending the job for a requeue from the last checkpoint \(step (\d+)\)")


def stop_rank_1(proc: subprocess.Popen, log: Path, expected: re.Pattern, run: Path) -> None:
    """SIGSTOP rank 1 (a hang): the launcher must end the job with ``expected``'s one line and exit 75, soon, having
    ended the stopped rank; the line names the step under way and the checkpoint a rerun resumes from."""
    stopped = worker_pid(proc.pid, 1)
    os.kill(stopped, signal.SIGSTOP)
    began = time.monotonic()
    try:
        code = finish(proc, log, timeout=patience(120))
        assert not running(stopped), "the launcher ended the stopped rank"
    finally:
        if running(stopped):
            os.kill(stopped, signal.SIGKILL)
    assert code == EXIT_REQUEUE, output(log)[-3000:]
    assert time.monotonic() - began < 90
    (line,) = [line for line in lines_with("distst: rank", log) if "died" not in line]
    match = expected.fullmatch(line)
    assert match, line
    assert int(match.groups()[-1]) == newest_checkpoint(run), "the line names the checkpoint the rerun resumes from"
    assert int(match.group(1)) > newest_checkpoint(run)


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


def test_a_killed_rank_restarts_in_place_a_stopped_one_ends_the_job_and_the_rerun_ends_bitwise_equal(
        clean: Path, tmp_path: Path) -> None:
    job, run, log = write_job(tmp_path / "job.yaml"), tmp_path / "run", tmp_path / "launch.log"
    proc = launch(job, run, log, train__hang_min_s=5)
    wait_for_file(run / "checkpoints" / "step_00000010", proc, log)
    os.kill(worker_pid(proc.pid, 1), signal.SIGKILL)

    # The group restarts from the last checkpoint; once it has written a newer one, rank 1 hangs.
    deadline = time.monotonic() + patience(180)
    while not (resumed := re.findall(r"resuming \S+ from step_(\d+)", output(log))):
        assert proc.poll() is None and time.monotonic() < deadline, output(log)[-3000:]
        time.sleep(0.05)
    wait_for_step(run, int(resumed[0]) + 11, proc, log)  # past the next checkpoint
    stop_rank_1(proc, log, HANG_LINE, run)
    died = lines_with("distst: rank 1 died", log)
    assert died == [f"distst: rank 1 died (killed by SIGKILL); restarting the 2 workers from the last checkpoint "
                    f"(restart 1 of at most 3; torchrun's log: {run / LOG_NAME})"]
    text = output(log)
    assert len(lines_with("distst: ", log)) == 2, text[-3000:]  # a line for each fault, nothing else of distst's
    assert "Traceback" not in text and "ChildFailedError" not in text  # torchrun's report went to its log
    assert "ChildFailedError" in (run / LOG_NAME).read_text()
    assert "resuming" in text  # the workers' own output stays visible

    rerun = tmp_path / "rerun.log"
    proc = launch(job, run, rerun, train__hang_min_s=5)  # the same command: it resumes and finishes
    assert finish(proc, rerun) == 0, output(rerun)[-3000:]
    assert f"finished step {STEPS}" in output(rerun)
    assert_same_results(run, clean)


def test_with_the_watchdog_off_the_collective_timeout_ends_the_job_the_same_way(tmp_path: Path) -> None:
    # 8 s: start-up's collectives wait for the slower rank's imports too. The rerun is the test above's.
    job, run, log = write_job(tmp_path / "job.yaml"), tmp_path / "run", tmp_path / "launch.log"
    proc = launch(job, run, log, train__hang_factor=0, train__collective_timeout=8)
    wait_for_step(run, 11, proc, log)
    stop_rank_1(proc, log, TIMEOUT_LINE, run)
    assert len(lines_with("distst: ", log)) == 1 and "Traceback" not in output(log)
