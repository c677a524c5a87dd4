"""Distillation inside real runs: IMP levels (AdaIN, CycleGAN's generators) and a channel method's fine-tuning
learn from the run's own dense step, QAT from a teacher file; the model files keep the student's layout; a stop
and resume with an adapter is bitwise, in one process and on 2 bf16 ZeRO-1 ranks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import REPO, SLIM_ADAIN, on_int8_grid, patience, subprocess_env, tiny_config
from test_gan_imp import GAN

from distst.config import model_section
from distst.distill import with_distillation
from distst.models import build
from distst.models.io import load_model, read_model_file, save_model
from distst.prune import run_schedule
from distst.records import Record
from distst.registry import method_record
from distst.stop import StopRequest
from distst.train import train

L2: dict[str, Any] = {"prune__method": "l2", "prune__iterations": 1, "prune__finetune_steps": 3,
                      "prune__layers": ["conv4_1"], "prune__ratio": 0.5, "prune__min_channels": 1,
                      "distill__weight": 1.0, "distill__features": ["transform"], "train__steps": 2}


def _logged(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_imp_levels_after_the_dense_one_learn_from_it(tmp_path: Path) -> None:
    out = tmp_path / "imp"
    cfg = tiny_config(out, prune__method="imp", prune__rounds=1, prune__rewind_step=1, model__encoder="trainable",
                      distill__weight=2.0)
    assert not run_schedule(cfg, out).stopped
    assert not any("distill" in row for row in _logged(out / "level_0")), "the dense level is the teacher"
    distilled = [row["distill"] for row in _logged(out / "level_1") if "distill" in row]
    assert distilled and all(value > 0 for value in distilled)
    dense, ticket = read_model_file(out / "level_0" / "model.pt")[1], read_model_file(out / "level_1" / "model.pt")[1]
    assert set(dense) == set(ticket), "the ticket's model file has the plain layout"


def test_a_stopped_and_resumed_distilled_fine_tuning_is_bitwise(tmp_path: Path) -> None:
    clean, stopped = tmp_path / "clean", tmp_path / "stopped"
    assert not run_schedule(tiny_config(clean, **L2), clean).stopped
    request = StopRequest()

    def stop_after_pruning(record: Record, _summary: dict[str, Any]) -> None:
        if record["kind"] == "prune":
            request.set("test")  # the distilled fine-tuning checkpoints its first step and returns

    assert run_schedule(tiny_config(stopped, **L2), stopped, stop=request, on_step=stop_after_pruning).stopped
    assert not run_schedule(tiny_config(stopped, **L2), stopped).stopped
    finetune = "02_finetune_1"
    def losses(run_dir: Path) -> list[dict[str, Any]]:  # every logged number but the timings
        return [{k: v for k, v in r.items() if not k.startswith("images_per_s")}
                for r in _logged(run_dir / finetune) if "distill/transform" in r]

    rows = losses(stopped)
    assert [r["step"] for r in rows] == [1, 2, 3], "distillation goes on after the evaluation at step 2"
    assert rows == losses(clean)
    a, b = read_model_file(clean / "slim" / "model.pt")[1], read_model_file(stopped / "slim" / "model.pt")[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("distill") for k in a), "the adapter is not in the slimmed model"


def test_cyclegan_generators_learn_from_their_dense_level_and_the_discriminators_do_not(tmp_path: Path) -> None:
    out = tmp_path / "gan"
    assert not run_schedule(tiny_config(out, **GAN, distill__weight=1.0), out).stopped
    rows = _logged(out / "level_1")
    generator = [row["generator/distill"] for row in rows if "generator/distill" in row]
    assert generator and all(value > 0 for value in generator)
    assert not any(key.startswith("discriminator/distill") for row in rows for key in row)
    dense, ticket = read_model_file(out / "level_0" / "model.pt")[1], read_model_file(out / "level_1" / "model.pt")[1]
    assert set(dense) == set(ticket)


def test_qat_learns_from_a_teacher_file_and_ends_plain_on_the_int8_grid(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher.pt"
    torch.manual_seed(5)
    save_model(build(tiny_config(tmp_path).model), teacher)
    cfg = tiny_config(tmp_path / "qat", prune__method="qat", train__steps=3, distill__weight=1.0,
                      distill__teacher=str(teacher))
    train(cfg, tmp_path / "qat", with_distillation(method_record("qat").factory(cfg), cfg, None))
    distilled = [row["distill"] for row in _logged(tmp_path / "qat") if "distill" in row]
    assert len(distilled) == 3 and all(value > 0 for value in distilled)
    _, state = read_model_file(tmp_path / "qat" / "model.pt")
    assert not any("parametrizations" in k or k.startswith("distill") for k in state)
    assert all(on_int8_grid(state[k]) for k in state if k.endswith("weight") and state[k].dim() == 4)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_bf16_ranks_distil_a_narrower_student_through_an_adapter_and_resume_bitwise(tmp_path: Path) -> None:
    """ZeRO-1 bf16 on 2 gloo ranks: a slimmed student learns from a dense teacher file through a 1x1 adapter on
    ``transform``; a stop after step 2 and a resume give the same losses and weights as a straight run."""
    from distst.train.engine import free_port

    torch.manual_seed(6)
    save_model(build(tiny_config(tmp_path).model), tmp_path / "teacher.pt")
    slim = build(model_section(name="adain", width=0.125, plan=SLIM_ADAIN))
    save_model(slim, tmp_path / "slim.pt")

    def launch(out: Path, reports: Path, *extra: str) -> list[dict]:
        reports.mkdir(exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               f"--master_port={free_port()}", str(REPO / "tests" / "workers" / "train_worker.py"),
                               str(out), str(reports), f"model.init_from={tmp_path / 'slim.pt'}",
                               f"distill.teacher={tmp_path / 'teacher.pt'}", "distill.weight=1.0",
                               "distill.features=[transform]", "train.steps=4", "train.deterministic=true",
                               "deepspeed.zero_stage=1", "deepspeed.precision=bf16", *extra],
                              cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=patience(300))
        assert proc.returncode == 0, proc.stderr[-4000:]
        return [json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1)]

    straight = launch(tmp_path / "straight", tmp_path / "r_straight")
    first = launch(tmp_path / "resumed", tmp_path / "r_first", "stop_after=2")
    assert [r["stopped"] for r in first] == [True, True] and first[0]["steps"] == 2
    resumed = launch(tmp_path / "resumed", tmp_path / "r_resumed")
    for rank in (0, 1):
        assert len(straight[rank]["distill"]) == 4 and all(v > 0 for v in straight[rank]["distill"])
        assert resumed[rank]["digest"] == straight[rank]["digest"]
        assert first[rank]["losses"] + resumed[rank]["losses"] == straight[rank]["losses"]
    # The adapter trained with the student (it is in the checkpoint's module); the teacher is nowhere in it.
    saved = next((tmp_path / "resumed" / "checkpoints").glob("step_*/**/mp_rank_00_model_states.pt"))
    module = torch.load(saved, weights_only=True)["module"]
    assert any(k.startswith("distill_adapters.") for k in module)
    assert not any("teacher" in k for k in module)
    _, state = read_model_file(tmp_path / "resumed" / "model.pt")
    assert not any(k.startswith("distill") for k in state)
    assert load_model(tmp_path / "resumed" / "model.pt")[0].plan == slim.plan
