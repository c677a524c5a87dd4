"""The hang watchdog's judgement (a fake clock), its thread, and the end it makes; a failed collective as one line;
its config keys. End to end with torchrun and a SIGSTOPped rank: tests/integration/test_rank_faults.py."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from helpers import tiny_config

from distst import rundir
from distst.config import ConfigError
from distst.launcher import STATUS_DIR_ENV, WorkerStatus
from distst.stop import EXIT_REQUEUE
from distst.train import watchdog
from distst.train.watchdog import (
    CollectiveFailed,
    Progress,
    StepWatchdog,
    collective_failure,
    collective_failures,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def dog(clock: Clock, factor: float = 10, min_s: float = 5, **progress: object) -> StepWatchdog:
    return StepWatchdog(factor, min_s, Progress(**{"rank": 1, "step": 1, **progress}), clock=clock,
                        on_hang=lambda line: None)


def steps(watch: StepWatchdog, clock: Clock, seconds: list[float], first: int = 1) -> None:
    for step, took in enumerate(seconds, first):
        clock.now += took
        watch.finished(step)


def test_a_step_far_slower_than_the_median_is_a_hang_named_by_rank_step_and_checkpoint() -> None:
    clock = Clock()
    watch = dog(clock, checkpoint=30)
    steps(watch, clock, [2.0, 1.0, 1.0, 1.0], first=33)  # the step under way is now 37
    clock.now += 10  # the floor: 5 s; 10 x the median 1 s = 10 s
    assert watch.check() is None
    clock.now += 31
    assert watch.check() == ("distst: rank 1 made no progress at step 37 for 41 s (median step 1 s): ending the job "
                             "for a requeue from the last checkpoint (step 30)")


def test_the_floor_holds_for_fast_steps_and_the_first_steps_are_warm_up() -> None:
    clock = Clock()
    watch = dog(clock, factor=20, min_s=5)
    clock.now += 60  # the first step (start-up, loaders): never judged
    assert watch.check() is None
    steps(watch, clock, [60.0, 0.01])
    clock.now += 60
    assert watch.check() is None, "still warming up: 2 steps timed"
    steps(watch, clock, [0.0, 0.01, 0.01], first=3)
    clock.now += 4.9  # 20 x 0.01 s is 0.2 s, but the floor is 5 s
    assert watch.check() is None
    clock.now += 0.2
    line = watch.check()
    assert line is not None and "for 5 s (median step 0.01 s)" in line and "from the start (no checkpoint yet)" in line


def test_evaluations_and_checkpoints_never_count() -> None:
    clock = Clock()
    watch = dog(clock, checkpoint=None)
    steps(watch, clock, [1.0] * 5)
    with watch.paused():
        clock.now += 1000
        assert watch.check() is None
    watch.checkpointed(5)
    clock.now += 2
    steps(watch, clock, [1.0], first=6)  # 3 s since the pause ended: the step took 1 s of them, not 1003
    assert list(watch.times)[-1] == 3.0 and watch.threshold() == 10
    assert watch.pausing(lambda: watch.mark)() is None  # a paused function runs with the clock stopped
    clock.now += 11
    assert "from the last checkpoint (step 5)" in (watch.check() or "")


def test_factor_0_is_off() -> None:
    clock = Clock()
    watch = dog(clock, factor=0)
    steps(watch, clock, [1.0] * 5)
    clock.now += 10_000
    assert watch.check() is None


def test_the_thread_ends_the_job_and_a_watched_block_closes_its_watchdogs() -> None:
    hung = threading.Event()
    lines: list[str] = []

    def on_hang(line: str) -> None:
        lines.append(line)
        hung.set()

    with watchdog.watched():
        watch = StepWatchdog(2, 0.2, Progress(rank=0, step=1), on_hang=on_hang, poll_s=0.01)
        watch.run()
        for step in range(1, 5):
            watch.finished(step)
        assert hung.wait(30), "no hang found"  # no step boundary came for 0.2 s
    assert lines and lines[0].startswith("distst: rank 0 made no progress at step 5 for 0 s")
    with watchdog.watched():
        quiet = StepWatchdog(2, 0.05, Progress(), on_hang=on_hang, poll_s=0.01)
        quiet.run()
    assert quiet._closed.is_set()  # closed with its block: it never fires after its train() call
    quiet._thread.join(10)
    assert not quiet._thread.is_alive()


def test_the_end_goes_to_the_launcher_or_stderr_releases_the_lock_and_exits_75(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    run = tmp_path / "run"
    rundir.acquire(run)
    monkeypatch.setattr(watchdog.PROGRESS, "workdir", run / "level_0")  # an IMP level: the lock is on the run
    monkeypatch.delenv(STATUS_DIR_ENV, raising=False)
    watchdog.end_job("distst: rank 0 made no progress ...")
    assert capsys.readouterr().err == "distst: rank 0 made no progress ...\n"
    assert not (run / rundir.LOCK_FILE).exists() and exits == [EXIT_REQUEUE]

    status = tmp_path / "status"
    status.mkdir()
    monkeypatch.setenv(STATUS_DIR_ENV, str(status))
    monkeypatch.setenv("RANK", "1")
    watchdog.end_job("distst: rank 1 made no progress ...")
    assert capsys.readouterr().err == ""  # the launcher says it, once
    assert WorkerStatus(status).hangs() == ["distst: rank 1 made no progress ..."]
    assert WorkerStatus(status).exit_code(1) == EXIT_REQUEUE and exits == [EXIT_REQUEUE] * 2


def gloo(text: str) -> RuntimeError:
    return RuntimeError(f"[/pytorch/third_party/gloo/gloo/transport/tcp/{text}")


def test_a_failed_collective_is_one_line_naming_rank_and_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchdog, "PROGRESS", Progress(rank=0, step=37, checkpoint=30, collective_timeout=600))
    timed_out = collective_failure(gloo("unbound_buffer.cc:78] Timed out waiting 600000ms for recv operation"))
    assert isinstance(timed_out, CollectiveFailed) and timed_out.hung and timed_out.exit_code == EXIT_REQUEUE
    assert str(timed_out) == ("rank 0 waited 600 s (train.collective_timeout) for another rank in a collective at "
                              "step 37: ending the job for a requeue from the last checkpoint (step 30)")
    lost = collective_failure(gloo("pair.cc:545] Read error [127.0.0.1]:57011: Connection reset by peer. This is "
                                   "typically caused by a remote worker hanging"))
    assert lost is not None and not lost.hung
    assert str(lost) == ("rank 0 lost another rank in a collective at step 37 (Read error [127.0.0.1]:57011: "
                         "Connection reset by peer): ending the job for a requeue from the last checkpoint (step 30)")
    assert collective_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None  # a bug stays one
    assert collective_failure(ValueError("gloo timed out")) is None
    assert collective_failure(gloo("pair.cc:1] invalid size")) is None  # not a timeout nor a lost peer: traceback
    with pytest.raises(CollectiveFailed), collective_failures():
        raise gloo("unbound_buffer.cc:78] Timed out waiting 3000ms for recv operation to complete")
    with pytest.raises(RuntimeError, match="shapes"), collective_failures():
        raise RuntimeError("shapes")


def test_the_keys_change_no_run_and_are_checked(tmp_path: Path) -> None:
    base = tiny_config(tmp_path)
    assert (base.train.hang_factor, base.train.hang_min_s) == (20, 300)
    assert not {"hang_factor", "hang_min_s"} & set(base.model_dump()["train"])  # run hashes stay as they were
    changed = tiny_config(tmp_path, train__hang_factor=5, train__hang_min_s=30)
    assert changed.model_dump()["train"]["hang_min_s"] == 30  # recorded in config.yaml when set
    assert changed.config_hash() == base.config_hash()  # how long to wait for a hang changes no result
    assert tiny_config(tmp_path, train__hang_factor=0).train.hang_factor == 0  # off
    for bad in ({"train__hang_factor": -1}, {"train__hang_min_s": 0}):
        with pytest.raises(ConfigError, match="hang_"):
            tiny_config(tmp_path, **bad)
