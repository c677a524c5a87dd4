"""``distst bench faults [--kills N]``: a measured fault record of IMP under SIGKILL.

Runs a small IMP job (the bundled sample shards, 3 levels, a 1/8-width AdaIN, deterministic CPU mode) once
uninterrupted, then again with N SIGKILLs at seeded random moments, re-running the same command after each
kill as a Slurm requeue would. Then the masks, ``summary.json``, every level's final weights, the rewind
point and the logged losses must equal the uninterrupted run's bitwise. Prints kills survived, levels lost
(a finished level that had to be trained again; must be 0), the extra wall time and any mismatch.

Kill moments (seeded, counted in work done rather than seconds, so that a loaded machine does not shift
them): every fourth kill lands in start-up (imports, DeepSpeed, checkpoint checks: a moment in the start-up
time measured on the uninterrupted run, and at the latest when the attempt starts training); the others
once the attempt trains: after k more rows of ``metrics.jsonl`` (k drawn from [0, R / N], R being the
uninterrupted run's rows) plus a fraction of a step. So kills hit steps, checkpoint writes, evaluations and
level ends, and N kills fit in the job.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..records import record_path

HELP = "SIGKILL a small IMP job N times at random moments, resume each time: bitwise equal to an uninterrupted run?"
LEVELS = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs to deliver (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--steps", type=int, default=16, help="training steps per level")
    p.add_argument("--shards", default=None,
                   help="folder with content-/style-{000000..000001}.tar (default: the bundled sample shards)")
    p.add_argument("--out", default=None, help="work folder (default: a temporary one, removed afterwards)")
    p.add_argument("--scenarios", action="store_true",
                   help="also the cluster faults, each in a small 2-process run: a rank killed, a rank hung, a "
                        "requeue onto another world size, a full disk, a killed sweep driver (distst.bench.scenarios)")


@dataclass
class FaultRecord:
    kills_requested: int
    kills_delivered: int = 0
    kills_in_startup: int = 0
    levels_lost: int = 0
    clean_wall_s: float = 0.0
    faulty_wall_s: float = 0.0
    attempts: int = 0
    final_exit: int | None = None
    mismatches: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # attempts that ended by themselves with an error
    messages: dict[str, int] = field(default_factory=dict)  # recovery messages seen, by kind

    @property
    def extra_wall_s(self) -> float:
        return self.faulty_wall_s - self.clean_wall_s

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.failures and self.levels_lost == 0 and self.final_exit == 0


def job_overrides(shards: Path | None, steps: int, out: Path) -> list[str]:
    from ..presets import as_overrides, tiny_settings

    return ["model.name=adain", *as_overrides(tiny_settings(
        shards, steps=steps, train__checkpoint_every=2, train__eval_every=max(steps // 2, 1), train__log_every=1,
        train__lr=1e-3, train__deterministic="true", prune__rounds=LEVELS - 1, prune__rewind_step=2,
        run__out_dir=out))]


def private_extensions(work: Path) -> Path:
    """A torch-extensions cache of the bench's own, seeded from the user's: DeepSpeed's CPU communication op is
    built (or loaded) there by the uninterrupted run, so no kill lands in a compilation, and another process
    rebuilding the shared cache with other flags cannot make every attempt compile again."""
    private = work / "torch_extensions"
    shared = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    if not private.exists() and shared.is_dir():
        shutil.copytree(shared, private, ignore=shutil.ignore_patterns("lock"))
    private.mkdir(parents=True, exist_ok=True)
    return private


def _env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", WANDB_MODE="disabled", TQDM_DISABLE="1", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", TORCH_EXTENSIONS_DIR=str(private_extensions(work)))
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # a world of one of its own
    return env


def _start(job: Path, overrides: list[str], log: Path) -> subprocess.Popen:
    with log.open("a") as handle:
        return subprocess.Popen([sys.executable, "-m", "distst", "imp", str(job), *overrides], env=_env(job.parent),
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


WARM_UP = ("from deepspeed.comm.torch import build_shm_op\n"
           "build_shm_op()  # DeepSpeed's CPU communication op, compiled into the cache if it is not there\n")


def warm_up(work: Path) -> None:
    """Build or load DeepSpeed's op once, untimed, so that neither the timings nor any kill include a compile."""
    subprocess.run([sys.executable, "-c", WARM_UP], env=_env(work), check=True, capture_output=True)


def _first_step_logged(run: Path) -> bool:
    path = run / "level_0" / "metrics.jsonl"
    return path.is_file() and path.stat().st_size > 0


@dataclass(frozen=True)
class Moment:
    phase: str  # "start-up" or "training"
    seconds: float  # start-up: after the start; training: after the ``rows`` further rows
    rows: int = 0


def _rows(run: Path) -> int:
    """Rows logged so far in every level's metrics.jsonl: the work done, whatever the machine's load."""
    total = 0
    for path in run.glob("level_*/metrics.jsonl"):
        with contextlib.suppress(OSError):
            total += path.read_bytes().count(b"\n")
    return total


def _trained_since(run: Path, since: float) -> bool:
    """Whether a level's metrics.jsonl was written after ``since`` (wall clock): the attempt trains."""
    return any(path.stat().st_mtime >= since for path in run.glob("level_*/metrics.jsonl"))


def _finished_levels(run: Path) -> set[int]:
    return {k for k in range(LEVELS) if record_path(run, f"level_{k}").is_file()}


def _clean_run(job: Path, overrides: list[str], run: Path, log: Path) -> tuple[float, float]:
    """The uninterrupted run; returns (start-up seconds until the first logged step, total seconds)."""
    started = time.perf_counter()
    proc = _start(job, overrides, log)
    startup = None
    while proc.poll() is None:
        if startup is None and _first_step_logged(run):
            startup = time.perf_counter() - started
        time.sleep(0.02)
    total = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed ({proc.returncode}); see {log}")
    return (startup if startup is not None else total / 3), total


def _attempt(job: Path, overrides: list[str], log: Path, run: Path, moment: Moment | None
             ) -> tuple[int, float, bool]:
    """One run of the command, SIGKILLed at ``moment`` (None: let it finish). Returns (exit code, wall seconds,
    killed)."""
    started, started_wall = time.perf_counter(), time.time()
    proc = _start(job, overrides, log)
    deadline = started + moment.seconds if moment is not None and moment.phase == "start-up" else None
    target = None  # rows to reach before the training kill's last delay
    while proc.poll() is None:
        if moment is not None and moment.phase == "start-up" and _trained_since(run, started_wall):
            deadline = min(deadline, time.perf_counter())  # start-up is over: now or never
        if moment is not None and moment.phase == "training" and deadline is None:
            if target is None and _trained_since(run, started_wall):
                target = _rows(run) + moment.rows
            if target is not None and _rows(run) >= target:
                deadline = time.perf_counter() + moment.seconds
        if deadline is not None and time.perf_counter() >= deadline:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: no child may survive its parent
            proc.wait()
            return proc.returncode, time.perf_counter() - started, True
        time.sleep(0.01)
    return proc.returncode, time.perf_counter() - started, False


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


# --- comparing ----------------------------------------------------------------------------------------------

def _tensor_files(run: Path) -> list[str]:
    names = [f"level_{k}/{name}" for k in range(LEVELS) for name in ("mask.pt", "model.pt")]
    return [*names, "level_0/rewind.pt"]


def _tensors(path: Path) -> dict:
    import torch

    blob = torch.load(path, map_location="cpu", weights_only=True)
    return blob["state_dict"] if isinstance(blob, dict) and "state_dict" in blob else blob


def _losses(run: Path, level: int) -> list[tuple[int, float]]:
    path = run / f"level_{level}" / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def compare(clean: Path, faulty: Path) -> list[str]:
    """Every difference between two finished IMP run directories (empty: bitwise equal)."""
    import torch

    found = []
    for name in _tensor_files(clean):
        if not (faulty / name).is_file():
            found.append(f"{name}: missing")
            continue
        a, b = _tensors(clean / name), _tensors(faulty / name)
        if a.keys() != b.keys():
            found.append(f"{name}: different tensors")
            continue
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        if differ:
            found.append(f"{name}: {len(differ)} tensor(s) differ, first {differ[0]}")
    summary = [json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else None
               for run in (clean, faulty)]
    if summary[0] != summary[1]:
        found.append("summary.json differs" if summary[1] is not None else "summary.json: missing")
    for level in range(LEVELS):
        if _losses(clean, level) != _losses(faulty, level):
            found.append(f"level_{level}/metrics.jsonl: logged losses differ")
    return found


# --- the record ---------------------------------------------------------------------------------------------

RECOVERY_MESSAGES = {"lock taken over": "taking over the lock", "interrupted save removed": "left by an interrupted save",
                     "damaged checkpoint skipped": "is damaged", "resumed from a checkpoint": "resuming "}


def fault_record(kills: int, work: Path, *, seed: int = 0, steps: int = 16, shards: Path | None = None
                 ) -> FaultRecord:
    """Run the uninterrupted and the killed-and-resumed job under ``work`` and compare them."""
    work.mkdir(parents=True, exist_ok=True)
    job = work / "faults.yaml"
    job.write_text("model:\n  name: adain\n")
    clean_dir, faulty_dir, log = work / "clean", work / "faulty", work / "faulty.log"
    for path in (clean_dir, faulty_dir):
        shutil.rmtree(path, ignore_errors=True)
    log.write_text("")
    record = FaultRecord(kills_requested=kills)
    warm_up(work)
    startup, record.clean_wall_s = _clean_run(job, job_overrides(shards, steps, clean_dir), clean_dir,
                                              work / "clean.log")
    overrides = job_overrides(shards, steps, faulty_dir)
    rng = random.Random(seed)
    rows = max(_rows(clean_dir), 1)
    row_s = max(record.clean_wall_s - startup, 0.1) / rows
    finished_before: set[int] = set()
    while record.kills_delivered < kills:
        if record.attempts % 4 == 3:  # every fourth attempt: imports, DeepSpeed, checkpoint checks
            moment = Moment("start-up", rng.uniform(0, startup))
        else:
            moment = Moment("training", rng.uniform(0, row_s), rows=rng.randint(0, max(rows // max(kills, 1), 1)))
        code, wall, killed = _attempt(job, overrides, log, faulty_dir, moment)
        record.attempts += 1
        record.kills_in_startup += killed and moment.phase == "start-up"
        record.faulty_wall_s += wall
        finished = _finished_levels(faulty_dir)
        record.levels_lost += len(finished_before - finished)
        finished_before |= finished
        if killed:
            record.kills_delivered += 1
        elif code == 0:
            break  # the job finished before the next kill moment
        else:
            record.failures.append(f"attempt {record.attempts} exited {code}: {_last_line(log)}")
            break
    if not record.failures:
        code, wall, _ = _attempt(job, overrides, log, faulty_dir, None)  # the last rerun: it must finish
        record.attempts += 1
        record.faulty_wall_s += wall
        record.final_exit = code
        record.levels_lost += len(finished_before - _finished_levels(faulty_dir))
        if code != 0:
            record.failures.append(f"the final rerun exited {code}: {_last_line(log)}")
    text = log.read_text(errors="replace")
    record.messages = {kind: text.count(needle) for kind, needle in RECOVERY_MESSAGES.items()}
    record.mismatches = compare(clean_dir, faulty_dir)
    return record


def print_record(record: FaultRecord) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="distst bench faults: IMP (3 levels) under SIGKILL, resumed by re-running the command")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("kills requested / delivered", f"{record.kills_requested} / {record.kills_delivered}"),
        ("  of which in start-up / while training",
         f"{record.kills_in_startup} / {record.kills_delivered - record.kills_in_startup}"),
        ("kills survived", str(record.kills_delivered if record.final_exit == 0 else 0)),
        ("levels lost", str(record.levels_lost)),
        ("runs of the command", str(record.attempts)),
        ("uninterrupted wall time", f"{record.clean_wall_s:.1f} s"),
        ("wall time with kills (all runs)", f"{record.faulty_wall_s:.1f} s"),
        ("extra wall time", f"{record.extra_wall_s:.1f} s"),
        *((f"messages: {kind}", str(count)) for kind, count in record.messages.items()),
        ("final run's exit code", str(record.final_exit)),
        ("bitwise equal (masks, summary.json, weights, rewind point, losses)",
         "yes" if not record.mismatches else "NO"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    for text in [*record.failures, *record.mismatches]:
        table.add_row("[red]problem[/red]", text)
    Console().print(table)


def run(args: argparse.Namespace) -> int:
    if args.kills < 0 or args.steps < 4:
        from ..errors import UserError

        raise UserError("--kills must be at least 0 and --steps at least 4")
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="distst-faults-"))
    scenarios = []
    try:
        record = fault_record(args.kills, work, seed=args.seed, steps=args.steps, shards=Path(args.shards) if args.shards else None)
        print_record(record)
        if args.scenarios:
            from .scenarios import print_scenarios, run_scenarios

            scenarios = run_scenarios(work / "scenarios")
            print_scenarios(scenarios)
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if record.ok and all(s.survived for s in scenarios if not s.injected.startswith("not measured")) else 1
