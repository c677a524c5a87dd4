"""A rank's death in a Slurm job, through a real one-node cluster: a task SIGKILLed mid-run (as the OOM killer does)
requeues the job to resume from its last checkpoint, like a stop, at most DISTST_MAX_RANK_DEATHS times; then the
job fails with one readable line. (The stops' bounds: test_slurm_requeue.py.)"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest
from helpers import patience
from slurm_fixtures import REPO_ROOT, wait_until

pytest_plugins = ["slurm_fixtures"]
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]

TINY = ("model.width=0.125 data.crop=32 data.batch_size=2 data.workers=0 data.shuffle_buffer=16 data.eval_pairs=2 "
        "train.log_every=1 tracking.backend=none prune.rounds=0 "
        "train.steps=2000 train.checkpoint_every=5 train.eval_every=2000")  # runs until a task dies


def submit(cluster, run_dir: Path, env: dict[str, str]):
    job_env = {"DISTST_JOB": "jobs/local/imp_adain.yaml", "DISTST_RUN_DIR": str(run_dir), "DISTST_OVERRIDES": TINY,
               "DISTST_VENV": str(Path(sys.executable).parents[1]), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
               "WANDB_MODE": "offline", "TQDM_DISABLE": "1", **env}
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    args = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10",
            f"--output={run_dir.parent}/slurm-%j.out"]
    return cluster.sbatch(REPO_ROOT / "slurm/imp_adain.sh", *args, env=job_env, cwd=REPO_ROOT, wait=False)


def checkpoints(run_dir: Path) -> set[str]:
    folder = run_dir / "level_0" / "checkpoints"
    return {p.name for p in folder.glob("step_*") if not p.name.endswith(".tmp")} if folder.is_dir() else set()


def kill_task(job_id: str, task: int) -> None:
    """SIGKILL the distst process of one task of the job (this machine is the cluster's node)."""
    wanted = {f"SLURM_JOB_ID={job_id}".encode(), f"SLURM_PROCID={task}".encode()}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            env = set(environ.read_bytes().split(b"\0"))
            command = (environ.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted <= env and b"distst" in command and b"imp" in command:
            os.kill(int(environ.parent.name), signal.SIGKILL)
            return
    raise AssertionError(f"no task {task} of job {job_id} found")


def test_a_task_killed_mid_run_requeues_the_job_at_most_max_rank_deaths_times(slurm_cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job = submit(slurm_cluster, run_dir, env={"DISTST_MAX_RANK_DEATHS": "1"})
    wait_until(lambda: bool(checkpoints(run_dir)), job)  # a checkpoint of this run: a requeue is worth it
    kill_task(job.job_id, 1)
    wait_until(lambda: job.restarts == 1 and job.state == "RUNNING", job)  # rank death 1 of at most 1
    before = checkpoints(run_dir)
    wait_until(lambda: bool(checkpoints(run_dir) - before), job)  # the requeued run resumed and checkpoints
    kill_task(job.job_id, 1)
    job.wait(timeout=patience(300))

    out = job.output()
    assert (job.state, job.restarts) == ("FAILED", 1), out
    assert ": task 1: Killed" in out  # srun names the task
    ended = r"a task was ended by a signal \(srun's exit code 1(37|43); srun's lines above name the task\)"
    assert re.search(f"^distst: {ended}; requeueing to resume from the last checkpoint \\(rank death 1 of at most "
                     "1\\)$", out, re.MULTILINE), out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.fullmatch(
        f"error: {ended}, and job {job.job_id} has been requeued after 1 rank death\\(s\\), the limit "
        "\\(DISTST_MAX_RANK_DEATHS=1\\): not requeueing again; resubmit it to resume from its last checkpoint",
        errors[0]), out
    assert "Traceback" not in out
