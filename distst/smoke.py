"""The first run on a new machine: ``python -m distst.smoke`` (``slurm/smoke_gpu.sh``; checklist: docs/gpu.md).

Each step checks one piece of the path a GPU job takes, prints ``[PASS]``/``[FAIL]``/``[SKIP]`` with what it
checked, the figures it found and what it should show on a GPU, and ends in a summary table and
``OUT/smoke.json``; the exit status is 1 if any step failed.

- ``accelerator``: DeepSpeed's accelerator and backend (``cuda``, ``nccl``), bf16 supported, a bf16 matmul;
- ``engine``: a DeepSpeed bf16 engine at ZeRO-1 (a world of one): fp32 masters set and read back exactly,
  and rounded into the bf16 module by a step;
- ``train``: ``distst train --nproc N`` in bf16; E recomputed from ``model.pt`` equals the reported E;
- ``imp``: ``distst imp --nproc N`` with 2 pruning rounds: exact sparsities, pruned fp32 masters all zero;
- ``requeue``: SIGUSR1 to a running ``distst train``: exit 75 and a checkpoint; the same command resumes
  from it and finishes;
- ``bench``: ``distst bench train --precision fp32 bf16`` (skipped where that command does not exist);
- ``srun``: inside a Slurm allocation, ``srun --gpus-per-task=1 python -m distst.smoke --steps-only ranks``:
  one process per GPU, each on its own device (``ranks``, a step run by each task; not in the default list).

``--dry`` runs every step on the CPU: DeepSpeed's CPU accelerator, gloo with 2 processes, bf16, tiny sizes,
the bundled sample shards: the same code as on a GPU, so that the first GPU run changes only the device.
Steps that touch the accelerator run in fresh processes (``distst`` subcommands, or this module's hidden
``--probe``), so this process never holds a GPU while a step's processes need it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .data.bundled import CONTENT, STYLE
from .records import record_path
from .stop import EXIT_REQUEUE

REPO = Path(__file__).resolve().parents[1]

#: Tiny job sizes: the CPU (``--dry``, as tests/helpers.py's tiny_overrides) and a GPU (larger, still tiny).
SIZES: dict[str, dict[str, object]] = {
    "dry": {"model.width": 0.125, "data.crop": 32, "data.batch_size": 2, "data.workers": 0,
            "data.shuffle_buffer": 16, "data.eval_pairs": 2, "train.steps": 4, "train.checkpoint_every": 2,
            "train.eval_every": 2, "train.log_every": 1, "train.lr": 1e-3},
    "gpu": {"model.width": 0.25, "data.crop": 64, "data.batch_size": 4, "data.workers": 1,
            "data.shuffle_buffer": 64, "data.eval_pairs": 4, "train.steps": 20, "train.checkpoint_every": 10,
            "train.eval_every": 10, "train.log_every": 1, "train.lr": 1e-3},
}
#: Steps of the stop-and-requeue run: enough that a SIGUSR1 sent after step 1 arrives well before the end.
REQUEUE_STEPS = {"dry": 20, "gpu": 400}
BENCH_STEPS = {"dry": 5, "gpu": 50}
#: Seconds any one process of a step may take before the step fails as hung.
TIMEOUT_S = {"dry": 600, "gpu": 900}
#: E recomputed in another process may differ in the last bits where kernels are chosen per process (cuDNN).
E_REL_TOL = {"dry": 1e-6, "gpu": 1e-5}
IMP_ROUNDS = 2

#: Variables of a launcher (torchrun, an earlier world of one) that must not leak into the steps' processes.
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
               "TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT")

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


class StepFailed(Exception):
    """A check did not hold: the message says which, with the figures."""


class Skipped(Exception):
    """The step cannot run here (the message says why, and how to run it)."""


class Interrupted(Exception):
    """A stop signal reached this process (a Slurm time limit, scancel)."""


@dataclass
class Record:
    """What a step found: lines for people, data for smoke.json, and one short line for the table."""

    figures: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    headline: str = ""

    def add(self, line: str) -> None:
        self.figures.append(line)


@dataclass
class Outcome:
    name: str
    status: str
    checks: str
    figures: list[str]
    data: dict[str, Any]
    headline: str
    on_gpu: str
    seconds: float
    error: str = ""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise StepFailed(message)


@dataclass
class Smoke:
    """One smoke run: mode, output folder, process count, and how to start the steps' processes."""

    dry: bool
    out: Path
    nproc: int
    quiet: bool = False
    children: list[subprocess.Popen] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return "dry" if self.dry else "gpu"

    @property
    def timeout(self) -> float:
        return TIMEOUT_S[self.mode]

    @property
    def job(self) -> Path:
        path = self.out / "job.yaml"
        if not path.is_file():
            path.write_text("# written by python -m distst.smoke\nmodel:\n  name: adain\n")
        return path

    def overrides(self, run_dir: Path | None = None, **extra: object) -> list[str]:
        """The tiny job on the bundled sample shards, in bf16, without tracking."""
        settings: dict[str, object] = {
            "data.content": CONTENT, "data.style": STYLE,
            **SIZES[self.mode], "tracking.backend": "none", "tracking.image_every": 10**6,
            "deepspeed.precision": "bf16",
        }
        if run_dir is not None:
            settings["run.out_dir"] = str(run_dir)
        settings.update({k.replace("__", "."): v for k, v in extra.items()})
        return [f"{k}={v}" for k, v in settings.items()]

    def say(self, text: str = "") -> None:
        if not self.quiet:
            print(text, flush=True)

    def env(self, *, world_of_one: bool, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
        env.update(PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
        if self.dry:
            env["DS_ACCELERATOR"] = "cpu"
            env.setdefault("OMP_NUM_THREADS", "1")  # as torchrun sets for its workers: one thread per process
        if world_of_one:  # never Slurm's task variables: this job is one process of its own
            env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        env.update(extra)
        return env

    def start(self, name: str, argv: list[str], *, world_of_one: bool, **env: str) -> tuple[subprocess.Popen, Path]:
        """Start ``argv`` with its output in ``OUT/logs/NAME.log`` (a file: a full pipe would block it)."""
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as sink:
            sink.write("$ " + " ".join(argv) + "\n")
            sink.flush()
            proc = subprocess.Popen(argv, env=self.env(world_of_one=world_of_one, **env), stdout=sink,
                                    stderr=subprocess.STDOUT)
        self.children.append(proc)
        return proc, log

    def wait(self, proc: subprocess.Popen, log: Path, timeout: float | None = None) -> int:
        try:
            return proc.wait(timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise StepFailed(f"{_command_name(proc)} did not finish within {timeout or self.timeout:.0f} s "
                             f"(hung in a collective?)\n{tail(log)}") from None
        finally:
            if proc.poll() is not None and proc in self.children:
                self.children.remove(proc)

    def run(self, name: str, argv: list[str], *, world_of_one: bool, timeout: float | None = None,
            **env: str) -> tuple[int, Path]:
        proc, log = self.start(name, argv, world_of_one=world_of_one, **env)
        return self.wait(proc, log, timeout), log

    def stop(self, proc: subprocess.Popen) -> None:
        """End a step's process: SIGTERM first (distst checkpoints and relays it to its workers), then SIGKILL."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def distst(self, name: str, *args: str, nproc: int | None = None, timeout: float | None = None
               ) -> tuple[int, Path]:
        nproc = self.nproc if nproc is None else nproc
        argv = [sys.executable, "-m", "distst", *args[:2], "--nproc", str(nproc), *args[2:]]
        return self.run(name, argv, world_of_one=nproc == 1, timeout=timeout)

    def probe(self, name: str, probe: str, **args: Any) -> dict[str, Any]:
        """Run ``probe`` (a function of this module) in a fresh world-of-one process; its figures and data."""
        result = self.out / "logs" / f"{name}.result.json"
        argv = [sys.executable, "-m", "distst.smoke", "--probe", probe, "--probe-args", json.dumps(args),
                "--probe-result", str(result)] + (["--dry"] if self.dry else [])
        code, log = self.run(name, argv, world_of_one=True)
        if not result.is_file():
            raise StepFailed(f"the {probe} probe ended with exit code {code} before reporting\n{tail(log)}")
        return json.loads(result.read_text())


def _command_name(proc: subprocess.Popen) -> str:
    argv = [str(a) for a in proc.args] if isinstance(proc.args, list | tuple) else [str(proc.args)]
    if len(argv) > 3 and argv[1] == "-m":
        return " ".join([argv[2], argv[3]]).replace("distst.smoke --probe", "probe")
    return argv[0]


def tail(log: Path, lines: int = 25) -> str:
    text = log.read_text(errors="replace").splitlines() if log.is_file() else []
    shown = "\n".join(f"    | {line[-300:]}" for line in text[-lines:])
    return f"  last {min(lines, len(text))} lines of {log}:\n{shown}"


def merge(rec: Record, found: dict[str, Any]) -> dict[str, Any]:
    """Take a probe's figures into the step's record; raise its failure, if it had one."""
    for line in found.get("figures", []):
        rec.add(line)
    rec.data.update(found.get("data", {}))
    if found.get("error"):
        raise StepFailed(found["error"])
    return found.get("data", {})


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


# ---------------------------------------------------------------------------------------------------- steps


def step_accelerator(s: Smoke, rec: Record) -> None:
    found = merge(rec, s.probe("accelerator", "accelerator"))
    rec.headline = found["headline"]


def step_engine(s: Smoke, rec: Record) -> None:
    found = merge(rec, s.probe("engine", "engine", overrides=s.overrides()))
    rec.headline = f"master set/get exact: max |diff| {found['set_get_max_diff']:g}; module = bf16(master)"


def step_train(s: Smoke, rec: Record) -> None:
    run = s.out / "train"
    overrides = s.overrides(run)
    code, log = s.distst("train", "train", str(s.job), *overrides)
    expect(code == 0, f"distst train --nproc {s.nproc} exited {code}\n{tail(log)}")
    summary = json.loads((run / "summary.json").read_text())
    expect(summary.get("precision") == "bf16", f"summary.json says precision {summary.get('precision')!r}, not bf16")
    expect(summary.get("world_size") == s.nproc, f"summary.json says world_size {summary.get('world_size')}, "
                                                 f"not {s.nproc}")
    rec.add(f"distst train --nproc {s.nproc}: {summary['steps']} steps in bf16, world size {summary['world_size']}, "
            f"{summary['images_per_s']} images/s in all, {summary['wall_s']} s")
    reported = float(summary["final"]["total_error"])
    found = merge(rec, s.probe("train-evaluate", "evaluate", job=str(s.job), overrides=overrides,
                               model=str(run / "model.pt")))
    recomputed = found["metrics"]["total_error"]
    diff = rel_diff(reported, recomputed)
    tol = E_REL_TOL[s.mode]
    same = "==" if diff == 0 else "~=" if diff <= tol else "!="
    line = f"E reported {reported:.6f} {same} from model.pt {recomputed:.6f} (rel diff {diff:.2g}, allowed {tol:g})"
    rec.data.update(e_reported=reported, e_from_file=recomputed, e_rel_diff=diff, e_rel_tol=tol)
    expect(diff <= tol, line + ": the model file does not hold the weights that were evaluated")
    rec.add(line)
    rec.headline = f"E {reported:.4f} {same} from model.pt (rel diff {diff:.2g})"


def step_imp(s: Smoke, rec: Record) -> None:
    import torch

    from .models.io import read_model_file
    from .prune.masks import remaining_target

    run = s.out / "imp"
    overrides = s.overrides(run, prune__rounds=IMP_ROUNDS)
    code, log = s.distst("imp", "imp", str(s.job), *overrides)
    expect(code == 0, f"distst imp --nproc {s.nproc} exited {code}\n{tail(log)}")
    rate = 0.2  # prune.rate's default; the job does not change it
    levels: dict[str, dict[str, Any]] = {}
    previous = None
    for level in range(IMP_ROUNDS + 1):
        folder = run / f"level_{level}"
        missing = [str(f) for f in (folder / "mask.pt", folder / "model.pt", record_path(run, folder.name))
                   if not f.is_file()]
        expect(not missing, f"level {level} lacks {', '.join(missing)}")
        masks = torch.load(folder / "mask.pt", weights_only=True)
        metrics = json.loads(record_path(run, folder.name).read_text())
        total = sum(m.numel() for m in masks.values())
        kept = sum(int(m.sum()) for m in masks.values())
        target = remaining_target(total, rate, level)
        sparsity = 1.0 - kept / total
        exact = kept == target and metrics["sparsity"] == sparsity
        _, state = read_model_file(folder / "model.pt")
        pruned = [state[f"{name}.weight"][~mask] for name, mask in masks.items()]
        pruned_count = sum(p.numel() for p in pruned)
        pruned_nonzero = sum(int(torch.count_nonzero(p)) for p in pruned)
        pruned_max = max((float(p.abs().max()) for p in pruned if p.numel()), default=0.0)
        dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()})
        nested = previous is None or all(bool((masks[n] <= previous[n]).all()) for n in masks)
        levels[f"level_{level}"] = {"sparsity": metrics["sparsity"], "expected_sparsity": 1.0 - target / total,
                                    "kept": kept, "target_kept": target, "prunable": total, "exact": exact,
                                    "pruned_weights": pruned_count, "pruned_nonzero_in_model_pt": pruned_nonzero,
                                    "model_pt_dtypes": dtypes, "masks_nested": nested,
                                    "total_error": metrics["errors"]["total_error"]}
        rec.add(f"sparsity level_{level} {metrics['sparsity']:.4f} {'exact' if exact else 'NOT exact'}: kept {kept:,} "
                f"of {total:,} = round({total:,} x 0.8^{level}) = {target:,}; pruned weights in model.pt: "
                f"{pruned_nonzero} of {pruned_count:,} non-zero (max |w| {pruned_max:g}); model.pt {'/'.join(dtypes)}")
        expect(exact, f"level_{level}: kept {kept} weights, expected exactly {target} (sparsity "
                      f"{metrics['sparsity']} in its record, {sparsity} from mask.pt)")
        expect(pruned_nonzero == 0, f"level_{level}: {pruned_nonzero} pruned weights are non-zero in model.pt "
                                    "(its fp32 masters): the masks did not reach the optimizer's masters")
        expect(dtypes == ["float32"], f"level_{level}: model.pt holds {dtypes}, not float32 masters")
        expect(nested, f"level_{level}: a weight pruned at level_{level - 1} is unpruned again")
        previous = masks
    rec.data["levels"] = levels
    last = run / f"level_{IMP_ROUNDS}"
    found = merge(rec, s.probe("imp-evaluate", "evaluate", job=str(s.job), overrides=["prune.method=imp", *overrides],
                               model=str(last / "model.pt")))
    reported = levels[f"level_{IMP_ROUNDS}"]["total_error"]
    recomputed = found["metrics"]["total_error"]
    diff, tol = rel_diff(reported, recomputed), E_REL_TOL[s.mode]
    rec.data.update(e_reported=reported, e_from_file=recomputed, e_rel_diff=diff)
    line = (f"E level_{IMP_ROUNDS} reported {reported:.6f} {'==' if diff == 0 else '~=' if diff <= tol else '!='} "
            f"from its model.pt {recomputed:.6f} (rel diff {diff:.2g})")
    expect(diff <= tol, line)
    rec.add(line)
    shown = ", ".join(f"{v['sparsity']:.4f}" for k, v in levels.items() if k != "level_0")
    rec.headline = f"sparsity {shown} exact; pruned masters 0"


def _logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if "loss" in row:
            rows.append(int(row["step"]))
    return rows


def step_requeue(s: Smoke, rec: Record) -> None:
    from .train import checkpoint

    run = s.out / "requeue"
    steps = REQUEUE_STEPS[s.mode]
    overrides = s.overrides(run, train__steps=steps, train__checkpoint_every=10**6, train__eval_every=10**6)
    argv = [sys.executable, "-m", "distst", "train", str(s.job), "--nproc", str(s.nproc), *overrides]
    proc, log = s.start("requeue-stop", argv, world_of_one=s.nproc == 1)
    deadline = time.monotonic() + s.timeout
    while not _logged_steps(run):  # an event, not a fixed sleep: the first step's row in metrics.jsonl
        if proc.poll() is not None:
            raise StepFailed(f"distst train ended ({proc.returncode}) before its first step\n{tail(log)}")
        if time.monotonic() > deadline:
            s.stop(proc)
            raise StepFailed(f"no training step logged within {s.timeout:.0f} s\n{tail(log)}")
        time.sleep(0.05)
    seen = _logged_steps(run)[-1]
    proc.send_signal(signal.SIGUSR1)
    code = s.wait(proc, log)
    saved = checkpoint.complete_checkpoints(run / "checkpoints")
    rec.add(f"SIGUSR1 sent after step {seen} was logged: exit code {code} (75 = checkpointed, run me again)")
    expect(code == EXIT_REQUEUE, f"distst train exited {code} after SIGUSR1, not {EXIT_REQUEUE}\n{tail(log)}")
    expect(len(saved) == 1, f"expected one checkpoint in {run / 'checkpoints'}, found {[p.name for p in saved]}")
    stopped_at = int(saved[0].name.split("_")[1])
    manifest = checkpoint.read_manifest(saved[0])
    problem = checkpoint.problem(saved[0])
    expect(problem is None, f"the checkpoint {saved[0]} is damaged: {problem}")
    expect(manifest.get("world_size") == s.nproc, f"checkpoint world_size {manifest.get('world_size')}, not {s.nproc}")
    expect(stopped_at < steps and not (run / "summary.json").exists(), f"the run finished (step {stopped_at}) "
                                                                        "instead of stopping")
    relayed = f"SIGUSR1 received; asking the {s.nproc} workers to checkpoint and stop"
    if s.nproc > 1:
        expect(relayed in log.read_text(), f"the launcher did not say {relayed!r}\n{tail(log)}")
    rec.add(f"checkpoint {saved[0].name}: complete (manifest checked), world size {manifest['world_size']}, "
            f"no summary.json yet")
    code, log = s.run("requeue-resume", argv, world_of_one=s.nproc == 1)
    expect(code == 0, f"the re-run exited {code}\n{tail(log)}")
    text = log.read_text()
    expect(f"from {saved[0].name}" in text, f"the re-run did not say it resumed from {saved[0].name}\n{tail(log)}")
    logged = _logged_steps(run)
    expect(logged == list(range(1, steps + 1)), f"metrics.jsonl steps are {logged[:5]}...{logged[-5:]} "
                                                f"({len(logged)} rows), not 1..{steps} once each")
    summary = json.loads((run / "summary.json").read_text())
    expect(summary["steps"] == steps, f"summary.json says {summary['steps']} steps, not {steps}")
    rec.add(f"the same command again: exit 0, resumed from {saved[0].name}, finished at step {steps}; "
            f"metrics.jsonl holds steps 1..{steps} once each")
    rec.data.update(signal_after_step=seen, stop_exit_code=EXIT_REQUEUE, checkpoint=saved[0].name,
                    stopped_at=stopped_at, resumed_exit_code=0, steps=steps)
    rec.headline = f"SIGUSR1 -> exit 75 at {saved[0].name} -> resumed, {steps} steps"


def _bench_available() -> bool:
    from .commands.bench import BENCHES

    return "train" in BENCHES


def _per_precision(data: Any, precision: str) -> dict[str, Any] | None:
    """A precision's entry in ``distst bench train``'s JSON, wherever it keeps it."""
    if isinstance(data, dict):
        if isinstance(data.get(precision), dict):
            return data[precision]
        if data.get("precision") == precision:
            return data
        for value in data.values():
            found = _per_precision(value, precision)
            if found is not None:
                return found
    if isinstance(data, list):
        for value in data:
            found = _per_precision(value, precision)
            if found is not None:
                return found
    return None


def _figure(entry: dict[str, Any], *words: str) -> float | None:
    for key, value in entry.items():
        if all(w in key for w in words) and isinstance(value, int | float):
            return float(value)
    return None


def step_bench(s: Smoke, rec: Record) -> None:
    if not _bench_available():
        raise Skipped("skipped: distst bench train not available (this checkout has no `bench train` target)")
    result = s.out / "bench.json"
    tiny = [o for o in s.overrides() if not o.startswith("deepspeed.precision=")]
    argv = [sys.executable, "-m", "distst", "bench", "train", "--job", str(s.job), "--precision", "fp32,bf16",
            "--steps", str(BENCH_STEPS[s.mode]), "--json", str(result), *tiny]
    code, log = s.run("bench", argv, world_of_one=True)
    expect(code == 0, f"distst bench train exited {code}\n{tail(log)}")
    expect(result.is_file(), f"distst bench train wrote no {result}\n{tail(log)}")
    data = json.loads(result.read_text())
    rec.data["bench"] = data
    rec.add(f"distst bench train on {data.get('device', '?')}, {data.get('steps', '?')} timed steps per precision; "
            f"setup (imports, process group) {_number(data.get('setup_s'))} s")
    speeds = {}
    for precision in ("fp32", "bf16"):
        entry = _per_precision(data, precision)
        expect(entry is not None, f"{result} has no {precision} entry")
        speed = _figure(entry, "images", "per_s") or _figure(entry, "img", "s")
        start = _figure(entry, "start")
        expect(speed is not None and speed > 0, f"{result}: no images/s for {precision}: {entry}")
        speeds[precision] = speed
        rec.add(f"{precision}: {speed:.1f} images/s per process, start-up {_number(start)} s"
                + (f", {entry['verdict']}" if "verdict" in entry else ""))
    ratio = speeds["bf16"] / speeds["fp32"]
    rec.add(f"bf16 / fp32: {ratio:.2f}x" + (" (on a CPU this ratio says nothing about a GPU)"
                                             if s.dry else ""))
    rec.data["bf16_over_fp32"] = ratio
    rec.headline = f"fp32 {speeds['fp32']:.1f}, bf16 {speeds['bf16']:.1f} images/s/process ({ratio:.2f}x)"


def _number(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "?"


def _first_node() -> str:
    try:
        names = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                               capture_output=True, text=True, timeout=30).stdout.split()
    except (KeyError, OSError, subprocess.SubprocessError):
        names = []
    return names[0] if names else socket.gethostname()


def step_srun(s: Smoke, rec: Record) -> None:
    if "SLURM_JOB_ID" not in os.environ or shutil.which("srun") is None:
        raise Skipped("not inside a Slurm allocation: run it as sbatch slurm/smoke_gpu.sh")
    from .train.engine import free_port

    ntasks = os.environ.get("SLURM_NTASKS", "1")
    out = s.out / "srun"
    argv = ["srun", f"--ntasks={ntasks}", "--kill-on-bad-exit=1",
            *([] if s.dry else ["--gpus-per-task=1"]),
            sys.executable, "-m", "distst.smoke", "--steps-only", "ranks", "--out", str(out),
            *(["--dry"] if s.dry else [])]
    shown = [a for a in argv if a.startswith(("srun", "--ntasks", "--gpus"))]
    rec.add("ran: " + " ".join([*shown, "python -m distst.smoke --steps-only ranks"] + (["--dry"] if s.dry else [])))
    code, log = s.run("srun", argv, world_of_one=False, MASTER_ADDR=_first_node(), MASTER_PORT=str(free_port()))
    report = out / "smoke.json"
    if report.is_file():
        (ranks,) = [step for step in json.loads(report.read_text())["steps"] if step["name"] == "ranks"]
        for line in ranks["figures"]:
            rec.add(line)
        rec.data.update(ranks["data"])
    expect(code == 0, f"srun ... --steps-only ranks exited {code}\n{tail(log)}")
    rec.headline = f"{ntasks} task(s), each on its own device"


def step_ranks(s: Smoke, rec: Record) -> None:
    import torch
    import torch.distributed as dist

    from .train.engine import prepare_process_env, setup_distributed

    prepare_process_env()  # under srun: the rank from SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS
    info = setup_distributed()
    me: dict[str, Any] = {"rank": info.rank, "local_rank": info.local_rank, "host": socket.gethostname(),
                          "pid": os.getpid(), "device": str(info.device),
                          "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if info.device.type == "cuda":
        props = torch.cuda.get_device_properties(info.device)
        me.update(name=props.name, uuid=str(props.uuid), visible=torch.cuda.device_count())
    everyone: list[Any] = [None] * info.world_size
    dist.all_gather_object(everyone, me)
    for r in everyone:
        where = f"{r['name']} {r['uuid']}, sees {r['visible']} GPU(s)" if "uuid" in r else "the CPU"
        rec.add(f"rank {r['rank']} (local {r['local_rank']}) on {r['host']}, pid {r['pid']}: {r['device']} = {where}, "
                f"CUDA_VISIBLE_DEVICES={r['cuda_visible_devices']}")
    rec.data["ranks"] = everyone
    expect([r["rank"] for r in everyone] == list(range(info.world_size)), "ranks are not 0..N-1")
    if "SLURM_NTASKS" in os.environ and "SLURM_STEP_ID" in os.environ:
        expect(info.world_size == int(os.environ["SLURM_NTASKS"]),
               f"world size {info.world_size}, but srun started {os.environ['SLURM_NTASKS']} tasks")
    wanted = "cpu" if s.dry else "cuda"
    wrong = [r["rank"] for r in everyone if not r["device"].startswith(wanted)]
    expect(not wrong, f"rank(s) {wrong} are not on a {wanted} device")
    own = [(r["host"], r.get("uuid", r["pid"])) for r in everyone]
    shared = sorted({f"{h} {d}" for h, d in own if own.count((h, d)) > 1})
    expect(not shared, f"several ranks share a device: {', '.join(shared)}")
    rec.headline = f"{info.world_size} rank(s), each on its own {wanted} device"


@dataclass(frozen=True)
class Step:
    run: Callable[[Smoke, Record], None]
    checks: str
    on_gpu: str


STEPS: dict[str, Step] = {
    "accelerator": Step(step_accelerator, "DeepSpeed's accelerator and communication backend, bf16 support",
                        "'cuda', backend 'nccl' (with its version), bf16 supported, each GPU's name and "
                        "memory, precision auto -> bf16"),
    "engine": Step(step_engine, "a DeepSpeed bf16 engine at ZeRO-1 (world of one): fp32 masters at the start, "
                                "after a step, set and read back, rounded into the module",
                   "the same figures on cuda:0 over nccl: every max |diff| 0, 0 weights differ"),
    "train": Step(step_train, "distst train in bf16 (gloo with 2 processes in --dry); E recomputed from model.pt",
                  "E reported == from model.pt (rel diff 0, or below 1e-5 where cuDNN picks other kernels)"),
    "imp": Step(step_imp, f"distst imp with {IMP_ROUNDS} pruning rounds in bf16: exact sparsities, pruned fp32 "
                          "masters zero, E from the last level's model.pt",
                "sparsity 0.2000 and 0.3600 exact (kept = round(N x 0.8^k)), 0 non-zero pruned weights"),
    "requeue": Step(step_requeue, "SIGUSR1 to a running distst train: exit 75 and a checkpoint; the same "
                                  "command resumes from it and finishes",
                    "the same: exit 75, step_N checkpoint of world size N, resumed, every step logged once"),
    "bench": Step(step_bench, "distst bench train: images/s per process and start-up, fp32 vs bf16",
                  "bf16 faster than fp32 per process (how much depends on the GPU and the model size)"),
    "srun": Step(step_srun, "srun --gpus-per-task=1 starts one process per GPU, each on its own device",
                 "one line per task: cuda:0 = its own GPU (distinct UUIDs), each task sees 1 GPU"),
}
#: Run only when named in --steps-only: by each task of the srun step.
EXTRA_STEPS: dict[str, Step] = {
    "ranks": Step(step_ranks, "every process of this launch (srun's tasks) and the device it trains on",
                  "each rank on its own GPU: distinct UUIDs"),
}
ALL_STEPS = {**STEPS, **EXTRA_STEPS}


# --------------------------------------------------------------------------------------- probes (own process)


def probe_accelerator(figures: list[str], dry: bool) -> dict[str, Any]:
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    figures.append(f"torch {torch.__version__} (CUDA build {torch.version.cuda}), CUDA_VISIBLE_DEVICES={visible}, "
                   f"DS_ACCELERATOR={os.environ.get('DS_ACCELERATOR')}")
    if not dry and not torch.cuda.is_available():
        reason = ("this torch has no CUDA (a CPU-only build)" if torch.version.cuda is None else
                  "torch sees no GPU (check nvidia-smi, the job's --gpus request and CUDA_VISIBLE_DEVICES)")
        raise StepFailed(f"no GPU: torch.cuda.is_available() is False: {reason}. On a CPU machine run "
                         "python -m distst.smoke --dry (or bash slurm/smoke_gpu.sh --dry)")
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    name, backend = accelerator.device_name(), accelerator.communication_backend_name()
    figures.append(f"DeepSpeed {deepspeed.__version__}: accelerator {name!r}, communication backend {backend!r}")
    want = ("cpu", "gloo") if dry else ("cuda", "nccl")
    if (name, backend) != want:
        hint = " (DS_ACCELERATOR is set: unset it)" if not dry and os.environ.get("DS_ACCELERATOR") else ""
        raise StepFailed(f"expected accelerator {want[0]!r} with backend {want[1]!r}, got {name!r}/{backend!r}{hint}")
    if dry:
        bf16 = bool(accelerator.is_bf16_supported())
        device = torch.device("cpu")
        summary = f"cpu, gloo, bf16 {'supported' if bf16 else 'NOT supported'} (DeepSpeed's CPU accelerator)"
        figures.append(summary)
        auto = "fp32 (bf16 on the CPU only when asked for: deepspeed.precision=bf16)"
    else:
        expect(torch.distributed.is_nccl_available(), "this torch has no NCCL")
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
        count = torch.cuda.device_count()
        names = []
        for index in range(count):
            props = torch.cuda.get_device_properties(index)
            names.append(props.name)
            figures.append(f"cuda:{index}: {props.name}, sm_{props.major}{props.minor}, "
                           f"{props.total_memory / 2**30:.0f} GiB")
        bf16 = bool(torch.cuda.is_bf16_supported())
        device = torch.device("cuda", 0)
        summary = f"cuda, nccl {nccl}, bf16 {'supported' if bf16 else 'NOT supported'}, {count} x {names[0]}"
        figures.append(summary)
        auto = "bf16" if bf16 else "fp32"
    if not bf16:
        raise StepFailed("bf16 is not supported here (GPUs before compute capability 8.0): precision auto picks fp32; "
                         "run jobs with deepspeed.precision=fp32 (or auto); the bf16 steps cannot run")
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(256, 256, generator=generator).to(device) for _ in range(2))
    exact = a @ b
    low = (a.bfloat16() @ b.bfloat16()).float()
    err = float((low - exact).norm() / exact.norm())
    figures.append(f"bf16 matmul on {device}: relative error {err:.1e} against fp32 (bf16 keeps 8 bits: ~1e-3)")
    expect(err < 2e-2, f"a bf16 matmul on {device} is off by {err:.2g} relative to fp32")
    figures.append(f"deepspeed.precision=auto resolves to {auto} here")
    return {"data": {"accelerator": name, "backend": backend, "bf16": bf16,
                                         "bf16_matmul_rel_error": err, "headline": summary}}


def probe_engine(figures: list[str], dry: bool, overrides: list[str]) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param
    from torch import nn

    from .config import build_config
    from .masters import fp32_master
    from .train.engine import initialize, prepare_process_env, setup_distributed

    prepare_process_env()
    info = setup_distributed()
    cfg = build_config({"run": {"name": "smoke"}}, [*overrides, "deepspeed.precision=bf16", "deepspeed.zero_stage=1",
                                                     "data.batch_size=4"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 8)).to(info.device)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    engine = initialize(cfg, model, optimizer, scheduler, info.device)
    params = list(engine.module.named_parameters())
    count = sum(p.numel() for _, p in params)
    figures.append(f"engine on {info.device} over {dist.get_backend()}: ZeRO stage {engine.zero_optimization_stage()}, "
                   f"bf16 {engine.bfloat16_enabled()}, optimizer {type(engine.optimizer).__name__}, "
                   f"{count} weights in {'/'.join(sorted({str(p.dtype).removeprefix('torch.') for _, p in params}))}")
    expect(engine.zero_optimization_stage() == 1 and engine.bfloat16_enabled(), "not a bf16 ZeRO-1 engine")
    expect(all(p.dtype == torch.bfloat16 for _, p in params), "the module DeepSpeed trains is not in bf16")

    def max_diff(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        return max(float((a.float() - b.float()).abs().max()) for a, b in pairs)

    def masters() -> list[torch.Tensor]:
        found = [safe_get_full_fp32_param(p) for _, p in params]
        expect(all(m is not None and m.dtype == torch.float32 for m in found),
               "safe_get_full_fp32_param found no fp32 master for a parameter")
        return found

    first = masters()
    start = max_diff(list(zip(first, (initial[n] for n, _ in params), strict=True)))
    start_off = sum(int((p.detach() != m.to(torch.bfloat16)).sum()) for m, (_, p) in zip(first, params, strict=True))
    figures.append(f"masters at the start == the fp32 initialisation: max |diff| {start:g}; bf16 module weights != "
                   f"their master rounded to bf16: {start_off}")
    expect(start == 0, f"the masters start {start:g} away from the fp32 weights the model was given (DeepSpeed "
                       "builds them from the module cast to bf16; distst.train.engine.initialize must reset them): "
                       "a rewind point or model.init_from would be rounded")
    expect(start_off == 0, f"{start_off} bf16 weights are not their master rounded to bf16 at the start")
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(1)).to(info.device, torch.bfloat16)
    y = torch.randn(4, 8, generator=torch.Generator().manual_seed(2)).to(info.device)

    def step() -> None:
        loss = (engine(x).float() - y).pow(2).mean()
        engine.backward(loss)
        engine.step()

    step()
    after = masters()
    moved = sum(int((m != initial[n]).sum()) for m, (n, _) in zip(after, params, strict=True))
    differ = sum(int((p.detach() != m.to(torch.bfloat16)).sum()) for m, (_, p) in zip(after, params, strict=True))
    figures.append(f"after one step (lr 1e-2): {moved} of {count} masters moved; bf16 module weights != their "
                   f"master rounded to bf16: {differ}")
    expect(moved > 0, "a step changed no master")
    expect(differ == 0, f"{differ} bf16 weights differ from their fp32 master rounded to bf16 after a step")

    generator = torch.Generator().manual_seed(3)
    targets = [torch.randn(p.shape, generator=generator).to(info.device) for _, p in params]
    rounded_away = sum(int((t.to(torch.bfloat16).float() != t).sum()) for t in targets)
    for (_, p), target in zip(params, targets, strict=True):
        safe_set_full_fp32_param(p, target)
    got = max_diff(list(zip(masters(), targets, strict=True)))
    through_distst = max_diff([(fp32_master(p), t) for (_, p), t in zip(params, targets, strict=True)])
    figures.append(f"master set/get exact: max |diff| {got:g} over {count} values ({rounded_away} of them not "
                   f"representable in bf16); distst.masters.fp32_master: max |diff| {through_distst:g}")
    expect(rounded_away > 0, "the values set were all bf16-representable: the check would prove nothing")
    expect(got == 0, f"safe_get_full_fp32_param returned other values than were set: max |diff| {got:g}")
    expect(through_distst == 0, f"distst.masters.fp32_master differs from the set masters: max |diff| "
                                f"{through_distst:g}")
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    step()
    kept = max_diff(list(zip(masters(), targets, strict=True)))
    module_off = sum(int((p.detach() != t.to(torch.bfloat16)).sum()) for (_, p), t in zip(params, targets,
                                                                                           strict=True))
    figures.append(f"a step at lr 0: masters kept (max |diff| {kept:g}); bf16 module weights != the set masters "
                   f"rounded to bf16: {module_off}")
    expect(kept == 0, f"a step at lr 0 changed the set masters: max |diff| {kept:g}")
    expect(module_off == 0, f"{module_off} bf16 weights are not the set masters rounded to bf16 after a step")
    return {"data": {"optimizer": type(engine.optimizer).__name__, "zero_stage": 1,
                                         "master_init_max_diff": start, "set_get_max_diff": got,
                                         "fp32_master_max_diff": through_distst, "after_lr0_max_diff": kept,
                                         "module_not_rounded_master": differ + module_off}}


def probe_evaluate(figures: list[str], dry: bool, job: str, overrides: list[str], model: str) -> dict[str, Any]:
    import torch

    from .config import load_config
    from .data import eval_pairs
    from .evaluate import evaluate
    from .models.io import load_model, read_model_file
    from .train.loop import build_for_training

    device = torch.device("cpu") if dry else torch.device("cuda", 0)  # where rank 0 of the run evaluated
    cfg = load_config(job, overrides)
    trained, _ = load_model(model)  # builds (and so draws random numbers) first: the seed comes after it
    torch.manual_seed(cfg.train.seed)  # the loss network as the trainer built it, from the same seed
    _, loss_net = build_for_training(cfg)
    content, style = eval_pairs(cfg.data)
    metrics = evaluate(trained.to(device), loss_net.to(device), content.to(device), style.to(device))
    _, state = read_model_file(model)
    weights = [v for k, v in state.items() if k.endswith(".weight") and v.is_floating_point()]
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()})
    off_grid = sum(int((w.to(torch.bfloat16).float() != w).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    figures.append(f"{Path(model).parent.name}/model.pt: {'/'.join(dtypes)}; {off_grid:,} of {total:,} weights not "
                   f"representable in bf16 (fp32 masters, not upcast bf16 weights)")
    expect(dtypes == ["float32"] and off_grid > 0,
           f"{model} does not hold fp32 masters: dtypes {dtypes}, {off_grid} weights off the bf16 grid")
    return {"data": {"metrics": metrics, "model_pt_dtypes": dtypes, "weights_off_bf16_grid": off_grid}}


PROBES: dict[str, Callable[..., dict[str, Any]]] = {
    "accelerator": probe_accelerator, "engine": probe_engine, "evaluate": probe_evaluate,
}


def run_probe(name: str, args: dict[str, Any], dry: bool, result: Path) -> int:
    """A probe in this (fresh) process: its figures, data and failure message into ``result``."""
    figures: list[str] = []
    try:
        found = {**PROBES[name](figures, dry=dry, **args), "figures": figures}
    except StepFailed as failed:
        found = {"figures": figures, "error": str(failed)}
    except Exception:
        found = {"figures": figures, "error": f"the {name} probe raised:\n{traceback.format_exc()}"}
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(found, indent=1, default=str))
    return 0


# ------------------------------------------------------------------------------------------------- the run


def run_step(s: Smoke, name: str, blocked: str | None) -> Outcome:
    step = ALL_STEPS[name]
    rec = Record()
    started = time.monotonic()
    error = ""
    if blocked:
        status, rec.headline = SKIP, f"not run: {blocked}"
        rec.add(rec.headline)
    else:
        s.say(f"-- {name}: {step.checks} ...")
        try:
            step.run(s, rec)
            status = PASS
        except Skipped as skipped:
            status, rec.headline = SKIP, str(skipped)
        except StepFailed as failed:
            status, error = FAIL, str(failed.args[0])
        except Interrupted as stopped:
            status, error = FAIL, f"interrupted by {stopped}: the job's time limit? (nothing after this step runs)"
        except Exception:
            status, error = FAIL, f"unexpected error:\n{traceback.format_exc()}"
        finally:
            for proc in list(s.children):
                s.stop(proc)
                s.children.remove(proc)
    if status == FAIL:  # the table shows why, in short
        first = error.splitlines()[0] if error else "failed"
        rec.headline = first if len(first) <= 80 else first[:77].rstrip() + "..."
    outcome = Outcome(name, status, step.checks, rec.figures, rec.data, rec.headline, step.on_gpu,
                      round(time.monotonic() - started, 1), error)
    show(s, outcome)
    return outcome


def show(s: Smoke, o: Outcome) -> None:
    s.say(f"[{o.status}] {o.name} ({o.seconds:.1f} s): {o.checks}")
    for line in o.figures:
        s.say(f"       {line}")
    if o.status == SKIP and o.headline not in o.figures:
        s.say(f"       {o.headline}")
    if o.error:
        for line in o.error.splitlines():
            s.say(f"       {line}")
    s.say(f"       on a GPU: {o.on_gpu}")
    s.say()


def table(outcomes: list[Outcome], total_s: float) -> str:
    width = max(len(o.name) for o in outcomes) if outcomes else 5
    rows = [f"{'step':<{width}}  result  {'time':>7}  figures"]
    rows += [f"{o.name:<{width}}  {o.status:<6}  {o.seconds:>6.1f}s  {o.headline}" for o in outcomes]
    counts = {status: sum(o.status == status for o in outcomes) for status in (PASS, FAIL, SKIP)}
    rows.append(f"{'total':<{width}}  {'':<6}  {total_s:>6.1f}s  "
                + ", ".join(f"{n} {status}" for status, n in counts.items()))
    return "\n".join(rows)


def write_report(s: Smoke, outcomes: list[Outcome], started: float, wall_s: float, complete: bool) -> Path:
    import platform

    path = s.out / "smoke.json"
    report = {"mode": s.mode, "nproc": s.nproc, "host": socket.gethostname(), "python": platform.python_version(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)), "wall_s": round(wall_s, 1),
              "complete": complete, "passed": not any(o.status == FAIL for o in outcomes),
              "steps": [asdict(o) for o in outcomes]}
    staged = path.with_suffix(".json.tmp")
    staged.write_text(json.dumps(report, indent=1, default=str) + "\n")
    os.replace(staged, path)
    return path


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _launch_rank() -> int:
    """This process's rank when started by torchrun or srun (0 otherwise): only rank 0 prints and writes."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "SLURM_STEP_ID" in os.environ and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m distst.smoke", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="steps: " + ", ".join(STEPS) + " (and ranks, run by srun's tasks). "
                                       "Checklist and what to do when a step fails: docs/gpu.md")
    p.add_argument("--dry", action="store_true",
                   help="on the CPU: DeepSpeed's CPU accelerator, gloo, bf16, tiny sizes (no GPU needed)")
    p.add_argument("--out", type=Path, help="an empty or new folder for the runs, logs and smoke.json "
                                            "(default runs/smoke/<mode>-<date>-<time>)")
    p.add_argument("--nproc", type=int, help="processes of the train, imp and requeue steps "
                                             "(default: 2 with --dry, else the GPUs this process sees)")
    p.add_argument("--steps-only", metavar="A,B", help="run only these steps, in the usual order")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    p.add_argument("--probe-args", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--probe-result", type=Path, help=argparse.SUPPRESS)
    return p


def _default_nproc(dry: bool) -> int:
    if dry:
        return 2
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except Exception:
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dry:
        os.environ["DS_ACCELERATOR"] = "cpu"  # this process and every one it starts
    if args.probe:
        if args.probe not in PROBES or args.probe_result is None:
            parser.error(f"--probe takes one of {', '.join(PROBES)} and --probe-result")
        return run_probe(args.probe, json.loads(args.probe_args), args.dry, args.probe_result)

    names = list(STEPS)
    if args.steps_only:
        wanted = [n.strip() for n in args.steps_only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in ALL_STEPS]
        if unknown or not wanted:
            parser.error(f"--steps-only: unknown step(s) {', '.join(unknown) or '(none given)'}; "
                         f"steps: {', '.join(ALL_STEPS)}")
        names = [n for n in ALL_STEPS if n in wanted]
    if args.nproc is not None and args.nproc < 1:
        parser.error("--nproc must be at least 1")
    launched = names == ["ranks"]  # by srun (or torchrun): one of several ranks, each running this
    mode = "dry" if args.dry else "gpu"
    out = args.out or Path("runs", "smoke", f"{mode}-{time.strftime('%Y%m%d-%H%M%S')}")
    out = out.resolve()
    if not launched and out.is_dir() and any(out.iterdir()):
        parser.error(f"--out {out} is not empty (a previous smoke run?): name a new folder")
    out.mkdir(parents=True, exist_ok=True)
    s = Smoke(dry=args.dry, out=out, nproc=args.nproc or (2 if args.dry else 1), quiet=_launch_rank() != 0)
    if not launched and "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")  # a world of one, never Slurm's tasks
    if args.nproc is None and not args.dry and any(n in names for n in ("train", "imp", "requeue")):
        s.nproc = _default_nproc(dry=False)
    if not launched:
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, _raise_interrupted)

    started, clock = time.time(), time.monotonic()
    where = ("--dry: the CPU, DeepSpeed's CPU accelerator, gloo, bf16" if args.dry
             else "GPU mode: expects cuda, nccl, bf16")
    s.say(f"distst smoke test on {socket.gethostname()}, {where}; {s.nproc} process(es) per multi-process step; "
          f"output in {out}\n")
    outcomes: list[Outcome] = []
    blocked: str | None = None
    try:
        for name in names:
            outcome = run_step(s, name, blocked)
            outcomes.append(outcome)
            if outcome.status == FAIL and name == "accelerator":
                blocked = "the accelerator step failed"
            if outcome.error.startswith("interrupted by"):
                blocked = "interrupted"
            if not s.quiet:
                write_report(s, outcomes, started, time.monotonic() - clock, complete=False)
    except Interrupted as stopped:  # between steps
        s.say(f"interrupted by {stopped}")
        outcomes += [Outcome(n, SKIP, ALL_STEPS[n].checks, [], {}, f"not run: interrupted by {stopped}",
                             ALL_STEPS[n].on_gpu, 0.0) for n in names[len(outcomes):]]
    wall_s = time.monotonic() - clock
    failed = any(o.status == FAIL for o in outcomes)
    if not s.quiet:
        path = write_report(s, outcomes, started, wall_s, complete=True)
        s.say(table(outcomes, wall_s))
        s.say(f"\n{'FAILED' if failed else 'passed'}: figures in {path}; logs in {out / 'logs'}"
              + ("" if args.dry else "\nReport them as docs/gpu.md says (paste the table and smoke.json)."))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
