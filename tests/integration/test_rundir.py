"""One run per run directory (a lock naming its holder; stale locks taken over) and one config per run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    REPO,
    distst_command,
    patience,
    run_distst,
    subprocess_env,
    tiny_config,
    tiny_overrides,
    write_job,
)

from distst import rundir
from distst.cli import main
from distst.config import ConfigError
from distst.track import read_metrics
from distst.train import train


def write_lock(run: Path, host: str, pid: int, started: int | None = None) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / rundir.LOCK_FILE).write_text(json.dumps({"host": host, "pid": pid, "started": started,
                                                    "since": "earlier", "command": "distst train old.yaml"}))


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: the PID names no process now
    return proc.pid


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    run, pid = tmp_path / "run", dead_pid()
    write_lock(run, socket.gethostname(), pid)
    rundir.acquire(run)
    assert f"taking over the lock of {run} from {socket.gethostname()} pid {pid}" in capsys.readouterr().err
    assert json.loads((run / rundir.LOCK_FILE).read_text())["pid"] == os.getpid()
    rundir.release(run)
    assert not (run / rundir.LOCK_FILE).exists()


def test_a_live_holder_is_named_and_another_hosts_lock_is_never_taken_over(tmp_path: Path) -> None:
    holder = subprocess.Popen(["sleep", "60"])
    try:
        run = tmp_path / "run"
        write_lock(run, socket.gethostname(), holder.pid, rundir._process_start(holder.pid))
        with pytest.raises(rundir.RunDirBusy, match=f"is in use by {socket.gethostname()} pid {holder.pid} "):
            rundir.acquire(run)
        write_lock(run, "another-node", dead_pid())  # its process cannot be checked from here
        with pytest.raises(rundir.RunDirBusy, match="is in use by another-node pid"):
            rundir.acquire(run)
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_re_entrant_and_covers_subdirectories(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with rundir.exclusive(run):
        with rundir.exclusive(run), rundir.exclusive(run / "level_1"):  # IMP: each level's train() inside
            assert not (run / "level_1" / rundir.LOCK_FILE).exists()
        assert (run / rundir.LOCK_FILE).is_file()
    assert not (run / rundir.LOCK_FILE).exists()


@pytest.mark.slow
def test_two_identical_commands_at_once_the_second_is_refused_naming_the_holder(tmp_path: Path) -> None:
    job, out = write_job(tmp_path / "job.yaml"), tmp_path / "run"
    # The first runs until it is told to stop, so the second is refused however slowly either starts.
    args = ["train", str(job), *tiny_overrides(out, train__steps=100_000, train__checkpoint_every=50,
                                               train__eval_every=50, train__log_every=1)]
    first = subprocess.Popen(distst_command(*args), cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + patience(300)
    while not (out / rundir.LOCK_FILE).is_file():
        assert first.poll() is None and time.monotonic() < deadline, "the first command never took the lock"
        time.sleep(0.05)
    second = run_distst(*args, check=False)
    assert first.poll() is None, "the first command ended before the second was refused"
    assert second.returncode == 2, second.stderr[-3000:]
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith(f"distst train: error: run directory {out} is in use by {socket.gethostname()} "
                           f"pid {first.pid} ")
    assert "Traceback" not in second.stderr
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=patience(300)) == 75  # checkpointed and stopped: the record is the first command's alone
    steps = [row["step"] for row in read_metrics(out / "metrics.jsonl") if "loss" in row]
    assert steps == list(range(1, len(steps) + 1))  # every step once, no duplicates from the refused command
    assert not (out / rundir.LOCK_FILE).exists()


@pytest.mark.slow
def test_a_changed_config_refuses_to_resume_and_safe_changes_are_recorded(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    train(tiny_config(out), out)
    with pytest.raises(ConfigError) as refused:
        train(tiny_config(out, train__lr=2e-3, data__crop=48), out)
    assert "changed: data.crop (32 -> 48), train.lr (0.001 -> 0.002)." in str(refused.value)

    job = write_job(tmp_path / "job.yaml")  # the CLI: one line, exit code 2, before anything starts
    capsys.readouterr()
    assert main(["train", str(job), *tiny_overrides(out, model__width=0.25)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "changed: model.width (0.125 -> 0.25)" in err[0]

    train(tiny_config(out, train__steps=6, train__eval_every=3), out)  # safe: recorded at the resumed step
    rows = read_metrics(out / "metrics.jsonl")
    change = [row for row in rows if "config_changed" in row]
    assert change == [{"step": 4, "config_changed": {"train.steps": {"from": 4, "to": 6},
                                                     "train.eval_every": {"from": 2, "to": 3}}}]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3, 4, 5, 6]


def test_a_key_added_by_a_later_version_at_its_default_is_no_change(tmp_path: Path) -> None:
    """A run stored before ``deepspeed.communication_dtype`` existed resumes; setting it to another value does not."""
    import yaml

    out = tmp_path / "run"
    train(tiny_config(out, train__steps=2), out)
    stored = yaml.safe_load((out / "config.yaml").read_text())
    del stored["deepspeed"]["communication_dtype"]  # as an older distst wrote it
    (out / "config.yaml").write_text(yaml.safe_dump(stored))
    assert rundir.config_changes(tiny_config(out, train__steps=2), out) == {}
    assert rundir.config_changes(tiny_config(out, train__steps=2, deepspeed__communication_dtype="bf16"), out) == {
        "deepspeed.communication_dtype": (None, "bf16")}
