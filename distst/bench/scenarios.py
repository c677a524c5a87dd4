"""``distst bench faults --scenarios``: the faults a cluster has, each injected into a small real run, beside
the SIGKILL record: a rank killed, a rank hung, a requeue onto another world size, a disk that fills up, and a
killed sweep driver.

Every run is a 1/8-width AdaIN on the bundled sample shards in deterministic CPU mode, so a run that survived
a fault must end bitwise equal to the same run uninterrupted (``model.pt`` and the logged losses). Faults are
injected at a moment counted in work done (rows of ``metrics.jsonl``), not in seconds, so a loaded machine
does not move them. Each scenario reports the faults injected, whether the run survived (it finished by
re-running the command as a Slurm requeue would, or by itself), the steps trained twice (lost work), whether the
final numbers equal the uninterrupted run's, and the one line distst printed about the fault.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..stop import EXIT_REQUEUE
from . import faults

STEPS = 12
#: Generous caps: a fault that is not handled shows as a timeout in the table, never as a hung benchmark.
RUN_CAP_S = 900


@dataclass
class Scenario:
    name: str
    injected: str
    survived: bool = False
    steps_lost: int | None = None
    equal: bool | None = None
    line: str = ""
    wall_s: float = 0.0


# --- running ----------------------------------------------------------------------------------------------

def _overrides(out: Path, **extra: object) -> list[str]:
    from ..presets import as_overrides, tiny_settings

    return ["model.name=adain", *as_overrides(tiny_settings(
        steps=STEPS, train__checkpoint_every=2, train__eval_every=STEPS // 2, train__log_every=1, train__lr=1e-3,
        train__deterministic="true", run__out_dir=out, **extra))]


def _start(work: Path, run: Path, nproc: int, log: Path, extra: tuple[str, ...] = (),
           preexec: Callable[[], None] | None = None) -> subprocess.Popen:
    job = work / "job.yaml"
    job.write_text("model:\n  name: adain\n")
    handle = log.open("a")
    try:
        return subprocess.Popen([sys.executable, "-m", "distst", "train", str(job), *_overrides(run), *extra,
                                 "--nproc", str(nproc)], env=faults._env(work), stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec)
    finally:
        handle.close()


def _finish(proc: subprocess.Popen, cap: float = RUN_CAP_S) -> int | None:
    try:
        return proc.wait(timeout=cap)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def _rows(run: Path) -> int:
    path = run / "metrics.jsonl"
    with contextlib.suppress(OSError):
        return sum(1 for line in path.read_text().splitlines() if '"loss"' in line)
    return 0


def _wait_rows(proc: subprocess.Popen, run: Path, rows: int, cap: float = RUN_CAP_S) -> bool:
    deadline = time.monotonic() + cap
    while _rows(run) < rows:
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _rank(proc: subprocess.Popen, rank: int) -> psutil.Process | None:
    """The worker of ``rank`` among the launcher's descendants (its environment says RANK)."""
    for child in psutil.Process(proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.environ().get("RANK") == str(rank) and "distst.commands.launch" in " ".join(child.cmdline()):
                return child
    return None


def _losses(run: Path) -> list[tuple[int, float]]:
    path = run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _equal(clean: Path, run: Path) -> bool:
    import torch

    if not (run / "model.pt").is_file():
        return False
    a, b = faults._tensors(clean / "model.pt"), faults._tensors(run / "model.pt")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) and _losses(clean) == _losses(run)


def _steps_lost(log: Path, at_fault: int) -> int | None:
    """Steps trained twice: the step reached at the fault less the checkpoint step the resume started from."""
    import re

    resumed = [int(m) for m in re.findall(r"from step_(\d+)", log.read_text(errors="replace"))]
    return max(at_fault - resumed[-1], 0) if resumed else None


def _fault_line(log: Path, *needles: str) -> str:
    """The first line distst printed with one of ``needles`` (from its ``distst`` on: a progress bar may share the
    terminal line)."""
    for line in log.read_text(errors="replace").replace("\r", "\n").splitlines():
        if any(needle in line for needle in needles):
            return line[line.find("distst"):].strip() if "distst" in line else line.strip()
    return ""


# --- the scenarios ------------------------------------------------------------------------------------------

def rank_killed(work: Path, clean: Path) -> Scenario:
    run, log = work / "rank_killed", work / "rank_killed.log"
    record = Scenario("rank killed", "SIGKILL of rank 1 at half the steps (2 processes)")
    started = time.perf_counter()
    proc = _start(work, run, 2, log)
    if _wait_rows(proc, run, STEPS // 2) and (worker := _rank(proc, 1)) is not None:
        at_fault = _rows(run)
        worker.kill()
        code = _finish(proc)
        record.survived = code == 0
        record.steps_lost = _steps_lost(log, at_fault)
    record.line = _fault_line(log, "restarting the")
    record.equal, record.wall_s = _equal(clean, run), time.perf_counter() - started
    return record


def rank_hung(work: Path, clean: Path) -> Scenario:
    run, log = work / "rank_hung", work / "rank_hung.log"
    record = Scenario("rank hung", "SIGSTOP of rank 1 at half the steps (2 processes; hang watchdog at 5 s)")
    hang = ("train.hang_min_s=5", "train.collective_timeout=60")
    started = time.perf_counter()
    proc = _start(work, run, 2, log, hang)
    if _wait_rows(proc, run, STEPS // 2) and (worker := _rank(proc, 1)) is not None:
        at_fault = _rows(run)
        worker.suspend()
        first = _finish(proc)
        record.line = _fault_line(log, "made no progress", "lost another rank", "waited")
        if first == EXIT_REQUEUE:  # the requeue: the same command again
            record.survived = _finish(_start(work, run, 2, log, hang)) == 0
            record.steps_lost = _steps_lost(log, at_fault)
    record.equal, record.wall_s = _equal(clean, run), time.perf_counter() - started
    return record


def world_size_changed(work: Path, clean: Path) -> Scenario:
    run, log = work / "world_size", work / "world_size.log"
    record = Scenario("world size changed", "stopped (SIGTERM) with 2 processes, requeued with 1")
    started = time.perf_counter()
    proc = _start(work, run, 2, log)
    if _wait_rows(proc, run, STEPS // 2):
        at_fault = _rows(run)
        os.kill(proc.pid, signal.SIGTERM)
        if _finish(proc) == EXIT_REQUEUE:
            one = _finish(_start(work, run, 1, log))
            record.line = _fault_line(log, "world size", "process(es)")
            if one == 0:  # elastic: finished on 1 process, on another data split (so not equal to the clean run)
                record.survived = True
                record.line = _fault_line(log, "resumes at step")
                record.steps_lost = _steps_lost(log, at_fault)
                record.wall_s = time.perf_counter() - started
                return record
            else:  # refused: the requeue on the old world size finishes it
                record.survived = _finish(_start(work, run, 2, log)) == 0
                record.injected += " (the 1-process resume refused)"
            record.steps_lost = _steps_lost(log, at_fault)
    record.equal, record.wall_s = _equal(clean, run), time.perf_counter() - started
    return record


def disk_full(work: Path, clean: Path) -> Scenario:
    run_root, log = work / "small_fs", work / "disk_full.log"
    record = Scenario("disk full", "a tmpfs holding about half the run's checkpoints (2 processes)")
    run_root.mkdir(exist_ok=True)
    per_checkpoint = sum(f.stat().st_size for f in next((clean / "checkpoints").glob("step_*")).rglob("*") if f.is_file())
    others = sum(f.stat().st_size for f in clean.rglob("*") if f.is_file() and "checkpoints" not in f.parts)
    size = others + per_checkpoint * (STEPS // 4) + (1 << 20)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(run_root)],
                                           capture_output=True).returncode != 0:
        record.injected, record.line = "not measured: mounting a small filesystem needs root here", ""
        return record
    run = run_root / "run"
    started = time.perf_counter()
    try:
        keep = (f"train.keep_checkpoints={STEPS}",)  # they accumulate, so the disk fills part-way
        first = _finish(_start(work, run, 2, log, keep))
        record.line = _fault_line(log, "no space left", "No space left", "quota exceeded")
        at_fault = max((s for s, _ in _losses(run)), default=0)
        if first == EXIT_REQUEUE:
            subprocess.run(["mount", "-o", f"remount,size={size * 4}", str(run_root)], check=True, capture_output=True)
            record.survived = _finish(_start(work, run, 2, log, keep)) == 0
            record.steps_lost = _steps_lost(log, at_fault)
        record.equal = _equal(clean, run)
    finally:
        with contextlib.suppress(OSError):
            shutil.copytree(run, work / "disk_full_run", dirs_exist_ok=True)
        subprocess.run(["umount", "-l", str(run_root)], capture_output=True)
    record.wall_s = time.perf_counter() - started
    return record


def driver_killed(work: Path) -> Scenario:
    """A 2-trial sweep on its own local Ray, its driver SIGKILLed while trial 1 runs, then ``--resume``."""
    import yaml

    from ..presets import tiny_settings

    out, log = work / "sweep", work / "driver_killed.log"
    record = Scenario("sweep driver killed", "SIGKILL of `distst tune` while its second trial runs")
    sweep = work / "sweep.yaml"
    job = Path(__file__).resolve().parents[2] / "jobs" / "local" / "imp_adain.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "faults", "job": str(job), "overrides": tiny_settings(steps=4, train__checkpoint_every=2,
                                                                       train__eval_every=2, prune__rounds=1,
                                                                       prune__rewind_step=1),
        "space": {"prune.rate": {"grid": [0.2, 0.5]}}, "resources": {"cpus": 1}, "concurrency": 1,
        "max_failures": 0}))
    command = [sys.executable, "-m", "distst", "tune", str(sweep), "--out", str(out), "--cpus", "2"]
    env = {k: v for k, v in faults._env(work).items() if k != "RAY_ADDRESS"}
    started = time.perf_counter()
    with log.open("a") as handle:
        proc = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + RUN_CAP_S
    while not list(out.glob("trials/*_00001/tune_attempts.jsonl")):
        if proc.poll() is not None or time.monotonic() > deadline:
            record.line = faults._last_line(log)
            return record
        time.sleep(0.1)
    tree = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait()
    _, orphans = psutil.wait_procs(tree, timeout=120)
    with log.open("a") as handle:
        resumed = subprocess.run([*command, "--resume"], env=env, stdout=handle, stderr=subprocess.STDOUT,
                                 timeout=RUN_CAP_S)
    rows = (out / "results.csv").read_text().splitlines()[1:] if (out / "results.csv").is_file() else []
    record.survived = resumed.returncode == 0 and len(rows) == 2 and all(",done," in row for row in rows)
    record.equal = None
    reaped = (out / "reaper.log").read_text().strip() if (out / "reaper.log").is_file() else ""
    record.line = f"{len(orphans)} Ray process(es) left after the kill; {reaped}"
    record.wall_s = time.perf_counter() - started
    return record


def run_scenarios(work: Path) -> list[Scenario]:
    work.mkdir(parents=True, exist_ok=True)
    faults.warm_up(work)
    clean, log = work / "clean", work / "clean.log"
    shutil.rmtree(clean, ignore_errors=True)
    if _finish(_start(work, clean, 2, log)) != 0:
        raise RuntimeError(f"the uninterrupted 2-process run failed; see {log}")
    return [rank_killed(work, clean), rank_hung(work, clean), world_size_changed(work, clean),
            disk_full(work, clean), driver_killed(work)]


def print_scenarios(records: list[Scenario]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"distst bench faults --scenarios: {STEPS}-step AdaIN runs (2 processes, gloo), "
                        "compared with the same run uninterrupted")
    for column in ("scenario", "fault injected", "survived", "steps lost", "final numbers equal", "what distst said",
                   "wall s"):
        table.add_column(column, overflow="fold")
    for r in records:
        equal = "-" if r.equal is None else "yes" if r.equal else "NO"
        table.add_row(r.name, r.injected, "yes" if r.survived else "NO", "-" if r.steps_lost is None else str(r.steps_lost),
                      equal, r.line[:160], f"{r.wall_s:.0f}")
    Console(width=200).print(table)
