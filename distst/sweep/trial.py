"""One Ray Tune trial = one distst IMP run in its own run directory, reported level by level.

The trial's training runs in a helper thread (one process) or in a Ray Train ``TorchTrainer`` (several
processes; Ray Train forms the gloo/NCCL group and DeepSpeed runs inside its workers). The Tune function's own
thread watches the run directory and reports each finished level (E, sparsity, matching, extreme sparsity so
far) with a Tune checkpoint that only *points at* the run directory: distst's own checkpoints there are what a
retried or resumed trial continues from, so no model file is ever copied.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import stop
from ..config import Config, load_config, with_overrides

POINTER_FILE = "distst_run.json"
#: Written by rank 0 of a multi-process trial: the id of Ray Train's worker placement group (see release.py).
PLACEMENT_GROUP_FILE = "ray_train_placement_group"
ATTEMPTS_FILE = "tune_attempts.jsonl"
FAULT_MARKER = ".fault_injected"
POLL_S = 0.5
#: CPUs the Tune function of a multi-process trial holds (it only waits and reports; Tune refuses 0).
TRIAL_FUNCTION_CPU = 0.01


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares (passed to the trainable with ``tune.with_parameters``)."""

    sweep_name: str
    sweep_dir: str
    cwd: str
    job: str
    fixed: dict[str, Any]
    cpus: float = 1.0
    gpus: float = 0.0
    processes: int = 1
    fail_once_after_level: int | None = None
    fail_trials: tuple[int, ...] = field(default_factory=tuple)

    def run_dir(self, trial_id: str) -> Path:
        return Path(self.sweep_dir) / "trials" / trial_id

    def trial_config(self, params: dict[str, Any], trial_id: str) -> Config:
        """The base job + the trial's parameters, written to the trial's directory and logged in the sweep's group."""
        # Built here from the job file, not shipped: configs are cheap to rebuild and plain data travels safely.
        placed = {"run.name": self.sweep_name, "run.out_dir": str(self.run_dir(trial_id)),
                  "tracking.group": self.sweep_name}
        return with_overrides(load_config(self.job, self.fixed), {**params, **placed})

    def torch_threads(self) -> int:
        """torch threads per process from the trial's CPUs (Ray sets OMP_NUM_THREADS to 1 without a CPU count)."""
        return max(1, math.floor(self.cpus / self.processes + 1e-9))


# --- level metrics from the run directory ------------------------------------------------------

def finished_levels(run_dir: Path, matching_tolerance: float = 0.0) -> list[dict[str, Any]]:
    """Every finished level (``level_<k>/metrics.json``), in order, with the dense E, whether it is matching
    (E at most the dense E times 1 + tolerance, as ``distst imp``) and the extreme sparsity so far."""
    rows: list[dict[str, Any]] = []
    while (run_dir / f"level_{len(rows)}" / "metrics.json").is_file():
        level = json.loads((run_dir / f"level_{len(rows)}" / "metrics.json").read_text())
        rows.append({key: level[key] for key in ("level", "sparsity", "total_error", "content_error", "style_error")})
    best = 0.0
    for row in rows:
        row["dense_total_error"] = rows[0]["total_error"]
        row["matching"] = int(row["total_error"] <= rows[0]["total_error"] * (1.0 + matching_tolerance))
        best = max(best, row["sparsity"]) if row["matching"] else best
        row["extreme_sparsity"] = best
    return rows


def report_level(row: dict[str, Any], run_dir: Path) -> None:
    """``tune.report`` with a checkpoint that holds only where the distst run lives and the level reached
    (Tune copies it into its trial folder before returning, so the temporary folder can go)."""
    from ray import tune

    with tempfile.TemporaryDirectory(prefix="distst-pointer-") as folder:
        (Path(folder) / POINTER_FILE).write_text(json.dumps({"run_dir": str(run_dir), "level": row["level"]}))
        tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))


def reported_level(checkpoint: Any) -> int:
    """The last level a previous attempt reported (-1: none)."""
    if checkpoint is None:
        return -1
    with checkpoint.as_directory() as folder:
        path = Path(folder) / POINTER_FILE
        return int(json.loads(path.read_text())["level"]) if path.is_file() else -1


# --- running the IMP run -----------------------------------------------------------------------

#: A Ray worker started inside an srun step (slurm/tune.sh) inherits that step's task variables; a trial is
#: not that Slurm task (it is a world of one, or Ray Train's world), so they must not be mapped to its rank.
SLURM_TASK_VARS = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_STEP_ID", "SLURM_STEPID")


#: A single-process trial is a world of one with a port of its own, whatever the driver's environment held
#: (Ray workers inherit it: two trials would otherwise fight over one MASTER_PORT).
WORLD_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def prepare_process_env(single_process: bool = False) -> None:
    """LOCAL_RANK etc. for DeepSpeed: the lead's helper when present, else setup_distributed fills them itself."""
    from ..train import engine

    for name in SLURM_TASK_VARS + (WORLD_VARS if single_process else ()):
        os.environ.pop(name, None)
    if hasattr(engine, "prepare_process_env"):
        engine.prepare_process_env()


def _run_imp(cfg: Config, run_dir: Path, request: stop.StopRequest) -> bool:
    """Run (or resume) IMP; True when it stopped on request before the end."""
    from ..prune import run_imp

    if "stop" in inspect.signature(run_imp).parameters:
        return run_imp(cfg, run_dir, stop=request).stopped
    # Until run_imp takes a request: the trainer polls the process-wide one (a trial owns its process).
    stop.PROCESS.clear()
    watcher = threading.Thread(target=_forward_stop, args=(request,), daemon=True)
    watcher.start()
    try:
        return run_imp(cfg, run_dir).stopped
    finally:
        request.set("trial ended")  # ends the forwarder


def _forward_stop(request: stop.StopRequest) -> None:
    while not request.is_set():
        time.sleep(0.2)
    if request.reason != "trial ended":
        stop.PROCESS.set(request.reason or "stop requested")


class Background(threading.Thread):
    """Runs ``target`` and keeps its exception for the Tune thread to re-raise (so Tune sees the failure)."""

    def __init__(self, target: Any, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as err:  # noqa: BLE001 - handed to the Tune thread
            self.error = err


def _train_worker(loop_config: dict[str, Any]) -> None:
    """A Ray Train worker: one rank of the trial's IMP run (Ray Train has formed the process group)."""
    import ray.train
    import ray.util
    import torch

    from ..prune import run_imp

    context = ray.train.get_context()
    os.chdir(loop_config["cwd"])
    os.environ.update(RANK=str(context.get_world_rank()), LOCAL_RANK=str(context.get_local_rank()),
                      WORLD_SIZE=str(context.get_world_size()),
                      LOCAL_WORLD_SIZE=str(context.get_local_world_size()))
    torch.set_num_threads(loop_config["threads"])
    prepare_process_env()
    run_dir = Path(loop_config["run_dir"])
    if context.get_world_rank() == 0:
        group = ray.util.get_current_placement_group()
        run_dir.mkdir(parents=True, exist_ok=True)
        if group is not None:
            (run_dir / PLACEMENT_GROUP_FILE).write_text(group.id.hex())
    setup: TrialSetup = loop_config["setup"]
    run_imp(setup.trial_config(loop_config["params"], loop_config["trial_id"]), run_dir)


def _torch_trainer(setup: TrialSetup, params: dict[str, Any], run_dir: Path, trial_id: str) -> Any:
    import ray.train
    from ray.train.torch import TorchTrainer

    gpus_per_worker = setup.gpus / setup.processes
    # The trial's CPUs less the Tune function's sliver, so trial function + workers fit in what the sweep asked.
    resources = {"CPU": (setup.cpus - TRIAL_FUNCTION_CPU) / setup.processes}
    if gpus_per_worker:
        resources["GPU"] = gpus_per_worker
    return TorchTrainer(
        _train_worker,
        train_loop_config={"setup": setup, "params": dict(params), "trial_id": trial_id, "run_dir": str(run_dir),
                           "cwd": setup.cwd, "threads": setup.torch_threads()},
        scaling_config=ray.train.ScalingConfig(num_workers=setup.processes, use_gpu=gpus_per_worker > 0,
                                               resources_per_worker=resources),
        # Named by the trial, so a retried or resumed trial finds its own Train run.
        run_config=ray.train.RunConfig(name=trial_id, storage_path=str(Path(setup.sweep_dir) / "ray_train"),
                                       # Tune retries the trial (FailureConfig of the sweep); a worker group that
                                       # cannot start fails after 3 tries instead of waiting forever.
                                       failure_config=ray.train.FailureConfig(max_failures=0,
                                                                              controller_failure_limit=3)),
    )


# --- the Tune function trainable ------------------------------------------------------------------

def _trial_index(trial_id: str) -> int:
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _log_attempt(run_dir: Path, trial_id: str, resumed_from: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / ATTEMPTS_FILE).open("a") as f:
        f.write(json.dumps({"trial": trial_id, "pid": os.getpid(), "time": time.time(),
                            "resumed_after_level": resumed_from}) + "\n")


def run_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """Tune function trainable: run one IMP trial, report each finished level, stop when Tune says so."""
    import torch
    from ray import tune

    from ..track import Tracker

    os.chdir(setup.cwd)  # Tune starts trials in its own trial folder; job paths are relative to the sweep's cwd
    trial_id = tune.get_context().get_trial_id()
    run_dir = setup.run_dir(trial_id)
    cfg = setup.trial_config(params, trial_id)
    last_reported = reported_level(tune.get_checkpoint())
    _log_attempt(run_dir, trial_id, last_reported)

    request = stop.StopRequest()
    if setup.processes == 1:
        torch.set_num_threads(setup.torch_threads())
        prepare_process_env(single_process=True)
        worker = Background(lambda: _run_imp(cfg, run_dir, request), name=f"imp-{trial_id}")
    else:
        trainer = _torch_trainer(setup, params, run_dir, trial_id)
        worker = Background(trainer.fit, name=f"train-{trial_id}")

    # One W&B run per trial (the per-level runs come from distst's trainer), in the sweep's group.
    tracker = Tracker(cfg.tracking, run_dir, config={**cfg.model_dump(mode="json"), "sweep": dict(params),
                                                     "trial_id": trial_id},
                      name=f"{setup.sweep_name}/{trial_id}", group=setup.sweep_name, enabled=True,
                      job_type="tune-trial", metrics_file=None)
    fault = (setup.fail_once_after_level if _trial_index(trial_id) in setup.fail_trials else None)
    worker.start()
    try:
        while True:
            alive = worker.is_alive()
            for row in finished_levels(run_dir, cfg.prune.matching_tolerance):
                if row["level"] <= last_reported:
                    continue
                tracker.log({f"imp/{k}": v for k, v in row.items()}, step=row["level"])
                report_level(row, run_dir)
                last_reported = row["level"]
                if fault is not None and row["level"] == fault and not (run_dir / FAULT_MARKER).exists():
                    (run_dir / FAULT_MARKER).write_text(trial_id)
                    request.set("injected fault")
                    worker.join()
                    raise RuntimeError(f"injected fault after level {fault} (sweep fault_injection, test only)")
            if not alive:
                break
            time.sleep(POLL_S)
        if worker.error is not None:
            raise worker.error
    except BaseException:
        # Tune stopping the trial (a scheduler decision) arrives here as SystemExit from tune.report: let a
        # single-process run checkpoint at its next step. A multi-process run's workers die with this actor;
        # the sweep's ReleaseTrainPlacementGroups callback frees their placement group.
        request.set("stopped by Ray Tune")
        raise
    finally:
        tracker.summary({"levels_reported": last_reported + 1})
        tracker.finish()
