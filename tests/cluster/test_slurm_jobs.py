"""The project's own batch scripts through a real one-node Slurm cluster: 2 srun tasks, preemption, requeue."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import patience
from slurm_fixtures import REPO_ROOT

pytest_plugins = ["slurm_fixtures"]
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]

TINY = ("model.width=0.125 data.crop=32 data.batch_size=2 data.workers=0 data.shuffle_buffer=16 data.eval_pairs=2 "
        "train.checkpoint_every=2 train.eval_every=2 train.log_every=1 tracking.backend=none train.deterministic=true")
# Two tasks of one CPU each on the test node; the scripts' GPU header is overridden as a user would.
CPU_TASKS = ("--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1")


def submit(cluster, script: str, run_dir: Path, overrides: str, *sbatch_args: str, wait: bool = True,
           env: dict[str, str] | None = None, timeout: float = patience(600)):
    job_env = {"DISTST_JOB": f"jobs/local/{Path(script).stem}.yaml", "DISTST_RUN_DIR": str(run_dir),
               "DISTST_OVERRIDES": f"{TINY} {overrides}", "DISTST_VENV": str(Path(sys.executable).parents[1]),
               "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "TQDM_DISABLE": "1",
               **(env or {})}
    run_dir.parent.mkdir(parents=True, exist_ok=True)  # Slurm cannot create the output file's directory
    args = [*CPU_TASKS, "--time=10", f"--output={run_dir.parent}/slurm-%j.out", *sbatch_args]
    return cluster.sbatch(REPO_ROOT / script, *args, env=job_env, cwd=REPO_ROOT, wait=wait, timeout=timeout)


def masks(run_dir: Path, level: int) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / f"level_{level}" / "mask.pt", weights_only=True)


@pytest.mark.parametrize("script", ["slurm/imp_adain.sh", "slurm/imp_sanet.sh"])
def test_sbatch_imp_runs_two_tasks_to_the_report(slurm_cluster, tmp_path: Path, script: str) -> None:
    run_dir = tmp_path / "run"
    job = submit(slurm_cluster, script, run_dir, "train.steps=4 prune.rounds=1 prune.rewind_step=2")
    assert (job.state, job.exit_code) == ("COMPLETED", "0:0"), job.output()
    assert "2 task(s)" in job.output()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [row["level"] for row in summary["levels"]] == [0, 1] and summary["complete"]
    for level in (0, 1):
        assert json.loads((run_dir / f"level_{level}" / "summary.json").read_text())["world_size"] == 2
    assert (run_dir / "report" / "report.md").is_file()
    assert summary["model"] == Path(script).stem.split("_")[1]


def wait_for_losses(path: Path, count: int, job, timeout: float = patience(300)) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text().count('"loss"') >= count):
        assert job.state not in ("COMPLETED", "FAILED", "CANCELLED"), job.output()
        assert time.monotonic() < deadline, f"no training progress in {path}: {job.output()}"
        time.sleep(0.1)


def test_preemption_signal_checkpoints_requeues_and_resumes_to_the_same_masks(slurm_cluster, tmp_path: Path) -> None:
    settings = "train.steps=24 prune.rounds=2 prune.rewind_step=2"
    reference = submit(slurm_cluster, "slurm/imp_adain.sh", tmp_path / "reference" / "run", settings)
    assert reference.state == "COMPLETED", reference.output()

    run_dir = tmp_path / "preempted" / "run"
    job = submit(slurm_cluster, "slurm/imp_adain.sh", run_dir, settings, wait=False)
    wait_for_losses(run_dir / "level_1" / "metrics.jsonl", 3, job)
    job.signal("USR1")  # scancel --signal=USR1 --batch: what --signal=B:USR1@120 sends before the time limit
    job.wait(timeout=patience(600))
    assert (job.state, job.exit_code, job.restarts) == ("COMPLETED", "0:0", 1), job.output()
    assert "requeueing" in job.output()
    steps = [int(p.name.split("_")[1]) for p in (run_dir / "level_1" / "checkpoints").glob("step_*")]
    assert max(steps) == 24
    for level in (1, 2):
        ours, theirs = masks(run_dir, level), masks(tmp_path / "reference" / "run", level)
        assert all(torch.equal(ours[n], theirs[n]) for n in theirs), f"level {level} masks differ after resume"
    ours = json.loads((run_dir / "summary.json").read_text())["levels"]
    assert ours == json.loads((tmp_path / "reference" / "run" / "summary.json").read_text())["levels"]


def wait_for_output(job, text: str, timeout: float = patience(600)) -> None:
    deadline = time.monotonic() + timeout
    while text not in job.output():
        assert job.state not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), job.output()
        assert time.monotonic() < deadline, f"no {text!r} in the job's output: {job.output()}"
        time.sleep(0.2)


def test_time_limit_signal_checkpoints_and_requeues(slurm_cluster, tmp_path: Path) -> None:
    # Slurm's own time-limit signal, driven by events rather than by guessing how fast a loaded machine trains:
    # once training runs, the limit is cut to 1 minute, so USR1@50 is due at once (Slurm sends it at its next
    # limit check, within 30 s); the job checkpoints and requeues; then the limit is lifted and the rerun
    # resumes from that checkpoint (there is no periodic one) to the end.
    run_dir = tmp_path / "run"
    job = submit(slurm_cluster, "slurm/imp_adain.sh", run_dir, "train.steps=600 train.checkpoint_every=100000 "
                 "train.eval_every=600 prune.rounds=0", "--signal=B:USR1@50", wait=False)
    wait_for_losses(run_dir / "level_0" / "metrics.jsonl", 1, job, timeout=patience(600))
    slurm_cluster.command(["scontrol", "update", f"JobId={job.job_id}", "TimeLimit=1"])
    wait_for_output(job, "requeueing")
    slurm_cluster.command(["scontrol", "update", f"JobId={job.job_id}", "TimeLimit=30"])
    job.wait(timeout=patience(1200))
    assert (job.state, job.exit_code) == ("COMPLETED", "0:0"), job.output()
    assert job.restarts >= 1
    resumed = [int(m) for m in re.findall(r"resuming \S+ from step_(\d+)", job.output())]
    assert resumed and min(resumed) > 0, job.output()
    assert json.loads((run_dir / "level_0" / "summary.json").read_text())["steps"] == 600


def test_missing_environment_fails_fast_with_a_readable_error(slurm_cluster, tmp_path: Path) -> None:
    no_venv = submit(slurm_cluster, "slurm/imp_adain.sh", tmp_path / "a" / "run", "",
                     env={"DISTST_VENV": str(tmp_path / "no-venv")})
    assert no_venv.state == "FAILED" and no_venv.exit_code == "2:0"
    assert "no Python virtual environment at" in no_venv.output() and "Traceback" not in no_venv.output()

    no_shards = submit(slurm_cluster, "slurm/imp_adain.sh", tmp_path / "b" / "run", "",
                       env={"DISTST_CONTENT": "/nowhere/coco-{000000..000003}.tar"})
    assert no_shards.state == "FAILED" and no_shards.exit_code == "2:0"
    assert "data.content: shard /nowhere/coco-000000.tar does not exist (and 3 more)" in no_shards.output()
    assert "Traceback" not in no_shards.output()
