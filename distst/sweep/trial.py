"""One Ray Tune trial = one distst run (IMP or channel pruning: its ``kinds.TrialKind``) in its own run
directory, reported one Tune iteration (IMP level, channel-pruning train stage) at a time.

The trial's job runs in a helper thread (one process) or in a Ray Train ``TorchTrainer`` (several processes;
Ray Train forms the gloo/NCCL group and DeepSpeed runs inside its workers). The Tune function's own thread
watches the run directory and reports each row the kind finds there (IMP: E, sparsity, matching, extreme
sparsity so far; channel pruning: E, MACs, parameters, budgeted E) with a Tune checkpoint that only *points
at* the run directory: distst's own checkpoints there are what a retried or resumed trial continues from, so
no model file is ever copied.
"""

from __future__ import annotations

import json
import logging
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
from .kinds import kind_of

log = logging.getLogger(__name__)

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
    #: objective.macs_budget (channel-pruning trials report budgeted_error with it).
    macs_budget: int | None = None
    #: Test-only fault: the Tune iteration index (0 = first row) after which chosen trials fail once.
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


# --- reporting -----------------------------------------------------------------------------------

def report_row(row: dict[str, Any], iteration: int, run_dir: Path) -> None:
    """``tune.report`` with a checkpoint that holds only where the distst run lives and the row reached
    (Tune copies it into its trial folder before returning, so the temporary folder can go)."""
    from ray import tune

    with tempfile.TemporaryDirectory(prefix="distst-pointer-") as folder:
        (Path(folder) / POINTER_FILE).write_text(json.dumps({"run_dir": str(run_dir), "iteration": iteration}))
        tune.report(row, checkpoint=tune.Checkpoint.from_directory(folder))


def reported_iteration(checkpoint: Any) -> int:
    """The index of the last row a previous attempt reported (-1: none)."""
    if checkpoint is None:
        return -1
    with checkpoint.as_directory() as folder:
        path = Path(folder) / POINTER_FILE
        if not path.is_file():
            return -1
        try:
            pointer = json.loads(path.read_text())
            return int(pointer.get("iteration", pointer.get("level", -1)))  # "level": sweeps before kinds
        except (ValueError, TypeError, AttributeError, UnicodeDecodeError):
            # Not a pointer distst wrote: trust nothing of it. The run resumes from its own checkpoints all
            # the same; only its rows are reported to Tune again.
            log.warning("checkpoint pointer %s is not distst's (not the JSON it writes): reporting every row of "
                        "this trial again", path)
            return -1


# --- running the job -----------------------------------------------------------------------------

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
    """A Ray Train worker: one rank of the trial's run (Ray Train has formed the process group)."""
    import ray.train
    import ray.util
    import torch

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
    cfg = setup.trial_config(loop_config["params"], loop_config["trial_id"])
    # No stop request: a stopped multi-process trial's workers end with its actor (release.py frees them).
    kind_of(cfg).run(cfg, run_dir, None)


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
        # "level": the Tune iteration index (an IMP level; a channel-pruning train stage's row).
        f.write(json.dumps({"trial": trial_id, "pid": os.getpid(), "time": time.time(),
                            "resumed_after_level": resumed_from}) + "\n")


def run_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """Tune function trainable: run one trial, report each finished row (Tune iteration), stop when Tune says so."""
    import torch
    from ray import tune

    from ..track import Tracker

    os.chdir(setup.cwd)  # Tune starts trials in its own trial folder; job paths are relative to the sweep's cwd
    trial_id = tune.get_context().get_trial_id()
    run_dir = setup.run_dir(trial_id)
    cfg = setup.trial_config(params, trial_id)
    kind = kind_of(cfg)
    last_reported = reported_iteration(tune.get_checkpoint())
    _log_attempt(run_dir, trial_id, last_reported)

    request = stop.StopRequest()
    if setup.processes == 1:
        torch.set_num_threads(setup.torch_threads())
        prepare_process_env(single_process=True)
        worker = Background(lambda: kind.run(cfg, run_dir, request), name=f"run-{trial_id}")
    else:
        trainer = _torch_trainer(setup, params, run_dir, trial_id)
        worker = Background(trainer.fit, name=f"train-{trial_id}")

    # One W&B run per trial (the per-level/per-stage runs come from distst's trainer), in the sweep's group.
    tracker = Tracker(cfg.tracking, run_dir, config={**cfg.model_dump(mode="json"), "sweep": dict(params),
                                                     "trial_id": trial_id},
                      name=f"{setup.sweep_name}/{trial_id}", group=setup.sweep_name, enabled=True,
                      job_type="tune-trial", metrics_file=None)
    fault = (setup.fail_once_after_level if _trial_index(trial_id) in setup.fail_trials else None)
    worker.start()
    try:
        while True:
            alive = worker.is_alive()
            for iteration, row in enumerate(kind.rows(cfg, run_dir, setup.macs_budget)):
                if iteration <= last_reported:
                    continue
                tracker.log({f"{kind.log_prefix}/{k}": v for k, v in row.items()}, step=iteration)
                report_row(row, iteration, run_dir)
                last_reported = iteration
                if fault is not None and iteration == fault and not (run_dir / FAULT_MARKER).exists():
                    (run_dir / FAULT_MARKER).write_text(trial_id)
                    request.set("injected fault")
                    worker.join()
                    raise RuntimeError(f"injected fault after {kind.iteration} {fault} (sweep fault_injection, "
                                       "test only)")
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
        tracker.summary({"iterations_reported": last_reported + 1})
        tracker.finish()
