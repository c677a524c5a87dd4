"""One preflight: ``distst check`` refuses what ``train`` / ``imp`` would refuse, with the same line, and a job
that fails it leaves nothing behind."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest
from helpers import REPO, SAMPLE, tiny_overrides, write_job

from distst.cli import main
from distst.config import load_config
from distst.preflight import samples_in

IMP_JOB = str(REPO / "jobs" / "local" / "imp_adain.yaml")


def error_lines(capsys: pytest.CaptureFixture) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def refused_alike(capsys: pytest.CaptureFixture, command: str, job: str, overrides: list[str]) -> str:
    """``check`` and ``command`` both exit 2 with the same one-line reason; returns it."""
    assert main(["check", job, *overrides]) == 2
    checked = error_lines(capsys)
    assert main([command, job, *overrides]) == 2
    started = error_lines(capsys)
    assert len(checked) == 1 and len(started) == 1, (checked, started)
    reason = checked[0].removeprefix("distst check: error: ")
    assert started[0] == f"distst {command}: error: {reason}"
    return reason


def test_eval_pairs_above_the_images_available(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    job = str(write_job(tmp_path / "job.yaml"))
    reason = refused_alike(capsys, "train", job, tiny_overrides(tmp_path / "run", data__eval_pairs=20))
    assert reason.endswith(f"data.eval_pairs=20: data.eval_style ({SAMPLE}/style-{{000000..000001}}.tar) holds only "
                           "12 images; lower data.eval_pairs or give data.eval_style more shards")  # content has 24
    assert not (tmp_path / "run").exists()
    alone = tmp_path / "shards"  # no manifest: counted from the tar headers
    alone.mkdir()
    shutil.copy(SAMPLE / "style-000000.tar", alone / "style-000000.tar")
    assert samples_in(f"{alone}/style-000000.tar") == 6 == samples_in(f"{SAMPLE}/style-000000.tar")


def test_a_gan_lottery_needs_its_fid_images_in_the_held_out_shards(tmp_path: Path, capsys: pytest.CaptureFixture
                                                                   ) -> None:
    job = str(REPO / "jobs" / "local" / "imp_cyclegan.yaml")
    reason = refused_alike(capsys, "imp", job, [f"run.out_dir={tmp_path / 'run'}", "model.fid_images=10"])
    assert reason.endswith("model.fid_images=10: data.eval_style (sample:style-000001.tar) holds only 6 "
                           "images; lower model.fid_images or give data.eval_style more shards")  # content has 12
    assert not (tmp_path / "run").exists()


def test_zero3_with_imp_is_refused_before_deepspeed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    reason = refused_alike(capsys, "imp", IMP_JOB, [f"run.out_dir={tmp_path / 'run'}", "deepspeed.zero_stage=3"])
    assert reason.endswith("deepspeed.zero_stage=3 cannot be combined with prune.method=imp: ZeRO-3 partitions "
                           "every parameter across ranks, so the method cannot edit weights in place; use 0, 1 or 2")
    assert not (tmp_path / "run").exists()


def test_an_unusable_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    job = str(write_job(tmp_path / "job.yaml"))
    (tmp_path / "file").write_text("")
    reason = refused_alike(capsys, "train", job, tiny_overrides(tmp_path / "file" / "run"))
    assert reason.endswith(f"run directory {tmp_path}/file/run: {tmp_path}/file is not a directory "
                           "(run.out_dir / run.root)")


@pytest.mark.parametrize("problem", ["unbalanced braces", "empty shard", "missing shard", "sanet crop"])
def test_data_and_size_problems(problem: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    job = str(write_job(tmp_path / "job.yaml", model="sanet" if problem == "sanet crop" else "adain"))
    out = tmp_path / "run"
    if problem == "unbalanced braces":
        overrides, expected = tiny_overrides(out, data__style=f"{SAMPLE}/style-{{000000..000001.tar"), \
            "Unbalanced braces"
    elif problem == "empty shard":
        tarfile.open(tmp_path / "empty-000000.tar", "w").close()
        overrides = tiny_overrides(out, data__style=f"{tmp_path}/empty-000000.tar")
        expected = f"data.style: shard {tmp_path}/empty-000000.tar holds no samples"
    elif problem == "missing shard":
        overrides = tiny_overrides(out, data__content=f"{tmp_path}/c-{{000000..000001}}.tar")
        expected = f"data.content: shard {tmp_path}/c-000000.tar does not exist (and 1 more)"
    else:
        overrides, expected = tiny_overrides(out, data__crop=40), "data.crop=40: sanet needs sizes of at least 32"
    assert expected in refused_alike(capsys, "train", job, overrides)
    assert not out.exists()  # no config.yaml, no metrics.jsonl


@pytest.mark.parametrize(("override", "expected"), [
    ("train.steps=0", "train.steps: Input should be greater than or equal to 1 (got 0)"),
    ("run.name=../../etc", "run.name='../../etc': must be a plain directory name"),
    ("run.name=a/b", "run.name='a/b': must be a plain directory name"),
])
def test_config_values_refused(override: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    job = str(write_job(tmp_path / "job.yaml"))
    assert main(["check", job, override]) == 2
    assert expected in capsys.readouterr().err


def test_models_width_zero_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "--width", "0"]) == 2
    assert capsys.readouterr().err.strip() == "distst models: error: --width must be positive, got 0.0"


@pytest.mark.parametrize("key", ["model.init_from", "distill.teacher"])
def test_an_unreadable_model_file_is_refused_before_start_up(key: str, tmp_path: Path, capsys: pytest.CaptureFixture
                                                             ) -> None:
    import torch

    job = str(write_job(tmp_path / "job.yaml"))
    truncated, foreign = tmp_path / "truncated.pt", tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(64)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    torch.save({"weight": torch.zeros(4)}, foreign)  # loads, but is no distst model file
    for bad, says in ((truncated, "is not a readable distst model file"), (foreign, "is not a distst model file")):
        reason = refused_alike(capsys, "train", job, tiny_overrides(tmp_path / "run", **{key.replace(".", "__"): bad}))
        assert reason.startswith(f"{job} cannot start: {key}: {bad} {says}"), reason
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("why", ["zero3", "rank_state"])
def test_a_resume_with_another_world_size_that_cannot_be_resplit_is_refused_before_start_up(
        tmp_path: Path, capsys: pytest.CaptureFixture, why: str) -> None:
    import torch

    from distst.rundir import RunDir
    from distst.train.checkpoint import STATE_FILE, write_manifest

    job = str(write_job(tmp_path / "job.yaml"))
    run = tmp_path / "run"
    overrides = tiny_overrides(run) + (["deepspeed.zero_stage=3"] if why == "zero3" else [])
    RunDir(run).write_config(load_config(job, overrides))
    step = run / "checkpoints" / "step_00000002"  # as a 2-process run's save leaves it
    step.mkdir(parents=True)
    torch.save({"step": 2}, step / STATE_FILE)
    pools = {"discriminator.pool_a.images": torch.zeros(2, 3, 4, 4)} if why == "rank_state" else {}
    for rank in range(2):
        torch.save({"torch": torch.get_rng_state(), "model_rank_state": pools}, step / f"rng_rank{rank}.pt")
    write_manifest(step, step=2, world_size=2)
    reason = refused_alike(capsys, "train", job, overrides)  # the test process is a world of one
    head = f"{job} cannot start: {step} was written by 2 process(es) and this run has 1: "
    says = ("a ZeRO-3 checkpoint resumes only at its own world size" if why == "zero3" else
            "the model keeps state of its own on every rank (discriminator.pool_a.images: e.g. a GAN's image "
            "pools), which cannot be merged into another number of processes")
    assert reason == (f"{head}{says}; resume with --nproc 2 (or as many Slurm tasks), or move {run / 'checkpoints'} "
                      "away to start over"), reason
