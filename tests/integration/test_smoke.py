"""``python -m distst.smoke`` (slurm/smoke_gpu.sh, docs/gpu.md): the first-GPU-run steps, here in their dry mode
on the CPU (DeepSpeed's CPU accelerator, gloo with 2 processes, bf16), and the GPU mode failing at once without
a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, patience, subprocess_env

from distst.smoke import STEPS

pytest_plugins = ["slurm_fixtures"]


def smoke_env(**extra: str) -> dict[str, str]:
    env = subprocess_env()
    for name in [k for k in env if k.startswith("SLURM_")]:
        env.pop(name)  # the srun step's SKIP must not depend on where the tests run
    env.update(extra)
    return env


def steps_of(report: dict) -> dict[str, dict]:
    return {step["name"]: step for step in report["steps"]}


@pytest.mark.slow
@pytest.mark.distributed
def test_dry_run_passes_every_step_but_srun_and_reports_the_figures(tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "distst.smoke", "--dry", "--out", str(out)], cwd=REPO,
                          env=smoke_env(), capture_output=True, text=True, timeout=patience(900))
    wall_s = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
    report = json.loads((out / "smoke.json").read_text())
    steps = steps_of(report)
    assert list(steps) == list(STEPS) and report["passed"] and report["mode"] == "dry" and report["nproc"] == 2
    statuses = {name: step["status"] for name, step in steps.items()}
    from distst.commands.bench import BENCHES

    bench = "PASS" if "train" in BENCHES else "SKIP"
    assert statuses == {**dict.fromkeys(STEPS, "PASS"), "bench": bench, "srun": "SKIP"}, proc.stdout[-8000:]

    # What each step prints: [STATUS] name, the figures, and what a GPU should show.
    for name, status in statuses.items():
        assert f"[{status}] {name} (" in proc.stdout
    assert proc.stdout.count("on a GPU: ") == len(STEPS)
    assert "not inside a Slurm allocation: run it as sbatch slurm/smoke_gpu.sh" in proc.stdout
    if bench == "SKIP":
        assert "skipped: distst bench train not available" in proc.stdout

    accelerator = steps["accelerator"]["data"]
    assert (accelerator["accelerator"], accelerator["backend"], accelerator["bf16"]) == ("cpu", "gloo", True)

    engine = steps["engine"]["data"]
    assert engine["master_init_max_diff"] == 0  # the masters start from the fp32 weights, not their bf16 cast
    assert engine["set_get_max_diff"] == 0 and engine["fp32_master_max_diff"] == 0
    assert engine["after_lr0_max_diff"] == 0 and engine["module_not_rounded_master"] == 0
    assert "master set/get exact: max |diff| 0 " in proc.stdout

    train = steps["train"]["data"]
    assert train["e_reported"] == pytest.approx(train["e_from_file"], rel=1e-6, abs=0)
    assert train["model_pt_dtypes"] == ["float32"] and train["weights_off_bf16_grid"] > 0
    assert "E reported " in proc.stdout and " from model.pt " in proc.stdout

    imp = steps["imp"]["data"]
    levels = imp["levels"]
    assert list(levels) == ["level_0", "level_1", "level_2"]
    for k, level in enumerate(levels.values()):
        assert level["exact"] and level["kept"] == round(level["prunable"] * 0.8**k)
        assert level["sparsity"] == 1 - level["kept"] / level["prunable"]
        assert level["pruned_nonzero_in_model_pt"] == 0 and level["model_pt_dtypes"] == ["float32"]
    assert levels["level_1"]["sparsity"] == pytest.approx(0.2, abs=1e-4)
    assert levels["level_2"]["sparsity"] == pytest.approx(0.36, abs=1e-4)
    assert imp["e_reported"] == pytest.approx(imp["e_from_file"], rel=1e-6, abs=0)
    assert "sparsity level_1 0.2000 exact" in proc.stdout

    requeue = steps["requeue"]["data"]
    assert requeue["stop_exit_code"] == 75 and 1 <= requeue["stopped_at"] < requeue["steps"]
    assert requeue["resumed_exit_code"] == 0

    # The summary table, last: one row per step and a total.
    table = proc.stdout[proc.stdout.rindex("\nstep ") :]
    for name, status in statuses.items():
        assert any(line.split()[:2] == [name, status] for line in table.splitlines())
    assert "total" in table
    print(f"dry smoke run: {wall_s:.0f} s wall")


def test_gpu_mode_without_a_gpu_fails_the_accelerator_step_and_runs_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    env = smoke_env(CUDA_VISIBLE_DEVICES="")  # no GPU, even on a machine that has one
    env.pop("DS_ACCELERATOR", None)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "distst.smoke", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=patience(120))
    assert time.monotonic() - started < 60
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[FAIL] accelerator" in proc.stdout
    assert "no GPU: torch.cuda.is_available() is False" in proc.stdout
    assert "python -m distst.smoke --dry" in proc.stdout  # what to run on a CPU machine instead
    steps = steps_of(json.loads((out / "smoke.json").read_text()))
    assert steps["accelerator"]["status"] == "FAIL"
    assert all(steps[name]["status"] == "SKIP" and steps[name]["headline"] == "not run: the accelerator step failed"
               for name in STEPS if name != "accelerator")
    assert not (out / "train").exists() and not (out / "imp").exists()


def test_out_must_be_a_new_folder(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("a previous run")
    proc = subprocess.run([sys.executable, "-m", "distst.smoke", "--dry", "--out", str(tmp_path)], cwd=REPO,
                          env=smoke_env(), capture_output=True, text=True, timeout=patience(60))
    assert proc.returncode == 2 and "is not empty" in proc.stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_ranks_step_under_a_launcher_sees_every_process_on_its_own_device(tmp_path: Path) -> None:
    # What each srun task runs: two ranks form one gloo group; rank 0 prints and writes the table.
    out = tmp_path / "ranks"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "distst.smoke",
                           "--dry", "--steps-only", "ranks", "--out", str(out)], cwd=REPO, env=smoke_env(),
                          capture_output=True, text=True, timeout=patience(300))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (ranks,) = json.loads((out / "smoke.json").read_text())["steps"]
    assert ranks["status"] == "PASS"
    assert [r["rank"] for r in ranks["data"]["ranks"]] == [0, 1]
    assert len({r["pid"] for r in ranks["data"]["ranks"]}) == 2
    assert proc.stdout.count("[PASS] ranks") == 1  # rank 1 prints nothing


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.xdist_group("slurm")
def test_sbatch_smoke_script_runs_the_srun_step_with_two_tasks(slurm_cluster, tmp_path: Path) -> None:
    # The script's GPU header overridden as a user without GPUs would; --dry through DISTST_SMOKE_ARGS.
    out = tmp_path / "smoke"
    env = {"DISTST_VENV": str(Path(sys.executable).parents[1]), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "DISTST_SMOKE_ARGS": f"--dry --steps-only accelerator,srun --out {out}"}
    job = slurm_cluster.sbatch(REPO / "slurm/smoke_gpu.sh", "--nodes=1", "--ntasks-per-node=2",
                               "--gpus-per-node=0", "--cpus-per-task=1", "--time=10",
                               f"--output={tmp_path}/slurm-%j.out", env=env, cwd=REPO, timeout=patience(600))
    assert (job.state, job.exit_code) == ("COMPLETED", "0:0"), job.output()
    steps = steps_of(json.loads((out / "smoke.json").read_text()))
    assert steps["srun"]["status"] == "PASS", job.output()
    assert [r["rank"] for r in steps["srun"]["data"]["ranks"]] == [0, 1]
    assert "[PASS] srun" in job.output() and "rank 1 (local 1)" in job.output()
