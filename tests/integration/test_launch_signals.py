"""``distst train/imp --nproc 2``: SIGTERM/SIGUSR1 sent to the launcher reach the torchrun workers, which
checkpoint and stop; the launcher exits 75, and the same command resumes and finishes."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import REPO, distst_command, patience, run_distst, subprocess_env, tiny_overrides, write_job

from distst.track import read_metrics
from distst.train import EXIT_REQUEUE, checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def launch(command: str, job: Path, overrides: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as sink:  # a file, not a pipe: two workers' logs could fill a pipe and block them
        return subprocess.Popen(distst_command(command, str(job), "--nproc", "2", *overrides), cwd=REPO,
                                env=subprocess_env(), stdout=sink, stderr=subprocess.STDOUT)


def wait_until(predicate, proc: subprocess.Popen, log: Path, timeout: float = patience(180)) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"ended early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    return [r["step"] for r in read_metrics(path) if "loss" in r] if path.is_file() else []


def saved_steps(checkpoints: Path) -> list[int]:
    return [int(p.name.split("_")[1]) for p in checkpoint.complete_checkpoints(checkpoints)]


def test_sigterm_mid_run_checkpoints_both_ranks_exits_75_and_resumes(tmp_path: Path) -> None:
    job, run, log = write_job(tmp_path / "job.yaml"), tmp_path / "run", tmp_path / "launch.log"
    proc = launch("train", job, tiny_overrides(run, train__steps=500, train__checkpoint_every=100), log)
    wait_until(lambda: len(logged_steps(run)) >= 1, proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=patience(120)) == EXIT_REQUEUE, log.read_text()[-3000:]

    assert "SIGTERM received; asking the 2 workers to checkpoint and stop" in log.read_text()
    (stopped_at,) = saved_steps(run / "checkpoints")
    assert 1 <= stopped_at < 100
    saved = run / "checkpoints" / checkpoint.tag_for(stopped_at)
    assert checkpoint.problem(saved) is None and checkpoint.read_manifest(saved)["world_size"] == 2
    assert not (run / "summary.json").exists()

    run_distst("train", str(job), "--nproc", "2",
               *tiny_overrides(run, train__steps=stopped_at + 2, train__checkpoint_every=100))
    assert logged_steps(run) == list(range(1, stopped_at + 3))
    assert (run / "summary.json").is_file()


def test_sigusr1_while_the_workers_start_waits_for_them_then_stops_imp_with_75(tmp_path: Path) -> None:
    # Sent while the launcher is still loading the config: held until both workers handle stop signals
    # (a worker still importing would die of it), then they checkpoint their first step.
    job, run, log = write_job(tmp_path / "job.yaml"), tmp_path / "run", tmp_path / "launch.log"
    overrides = tiny_overrides(run, train__steps=500, train__checkpoint_every=100, prune__rounds=1)
    proc = launch("imp", job, overrides, log)
    time.sleep(0.5)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=patience(180)) == EXIT_REQUEUE, log.read_text()[-3000:]
    assert "SIGUSR1 received; asking the 2 workers to checkpoint and stop" in log.read_text()
    assert saved_steps(run / "level_0" / "checkpoints") == [1]
    assert "Traceback" not in log.read_text()
