"""Bounded requeues through a real one-node Slurm cluster: a stopped job is requeued only when it wrote a
checkpoint, and at most DISTST_MAX_REQUEUES times; otherwise it fails with one readable line."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from helpers import patience
from slurm_fixtures import REPO_ROOT, wait_until

pytest_plugins = ["slurm_fixtures"]
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]

TINY = ("model.width=0.125 data.crop=32 data.batch_size=2 data.workers=0 data.shuffle_buffer=16 data.eval_pairs=2 "
        "train.log_every=1 tracking.backend=none prune.rounds=0 "
        "train.steps=500 train.checkpoint_every=100 train.eval_every=500")  # runs until stopped


def submit(cluster, run_dir: Path, tasks: int, env: dict[str, str] | None = None, overrides: str = ""):
    job_env = {"DISTST_JOB": "jobs/local/imp_adain.yaml", "DISTST_RUN_DIR": str(run_dir),
               "DISTST_OVERRIDES": f"{TINY} {overrides}".strip(),
               "DISTST_VENV": str(Path(sys.executable).parents[1]), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
               "WANDB_MODE": "offline", "TQDM_DISABLE": "1", **(env or {})}
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    args = ["--nodes=1", f"--ntasks-per-node={tasks}", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10",
            f"--output={run_dir.parent}/slurm-%j.out"]
    return cluster.sbatch(REPO_ROOT / "slurm/imp_adain.sh", *args, env=job_env, cwd=REPO_ROOT, wait=False)


def losses(run_dir: Path) -> int:
    path = run_dir / "level_0" / "metrics.jsonl"
    return path.read_text().count('"loss"') if path.is_file() else 0


def readable_failure(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert "Traceback" not in output, output
    return errors[0]


def test_stopped_job_whose_checkpoint_fails_is_not_requeued(slurm_cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # No periodic checkpoint: only the stop signal's checkpoint may meet the blocked directory. (With one at step
    # 100 the tasks could fail there first and be exiting when the script forwards USR1: exit code 138.)
    job = submit(slurm_cluster, run_dir, tasks=2, overrides="train.checkpoint_every=100000")
    wait_until(lambda: losses(run_dir) >= 1, job)
    # The checkpoint directory cannot be created: a file holds its name (chmod cannot stop root).
    blocked = run_dir / "level_0" / "checkpoints"
    assert not blocked.exists()
    blocked.write_text("not a directory")
    job.signal("USR1")
    job.wait(timeout=patience(300))

    assert (job.state, job.restarts) == ("FAILED", 0), job.output()
    assert "distst: signal received, asking the tasks to checkpoint" in job.output()
    assert f"error: creating checkpoint {blocked}/step_" in job.output()  # the tasks' own one-line error
    line = readable_failure(job.output())  # exit code 2, or 143 for a task srun --kill-on-bad-exit ended first
    assert re.match(rf"error: the tasks stopped \(exit code (2|143)\) but wrote no checkpoint in {run_dir} since the "
                    "job started: not requeueing", line), line


def test_job_is_requeued_at_most_max_requeues_times(slurm_cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job = submit(slurm_cluster, run_dir, tasks=1, env={"DISTST_MAX_REQUEUES": "1"})
    wait_until(lambda: losses(run_dir) >= 1, job)
    job.signal("USR1")
    wait_until(lambda: job.restarts == 1 and job.state == "RUNNING", job)  # requeue 1 of at most 1
    first_stop = losses(run_dir)
    wait_until(lambda: losses(run_dir) > first_stop, job)  # the requeued run resumed and is stepping
    job.signal("USR1")
    job.wait(timeout=patience(300))

    assert (job.state, job.restarts) == ("FAILED", 1), job.output()
    assert "requeueing job" in job.output() and "(requeue 1 of at most 1," in job.output()
    line = readable_failure(job.output())
    assert line == (f"error: job {job.job_id} has been requeued 1 time(s), the limit (DISTST_MAX_REQUEUES=1): not "
                    "requeueing again; resubmit it to resume from its last checkpoint")
    checkpoints = sorted((run_dir / "level_0" / "checkpoints").glob("step_*"))
    assert len(checkpoints) == 2, "each stop wrote its checkpoint"
