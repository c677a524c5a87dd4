"""A run checkpointed by N processes resumes with M (distst.train.elastic): ZeRO-1/2 through DeepSpeed's universal
checkpoint (converted with weights_only loads), ZeRO-0 natively; the resumed optimizer state is exactly the
saved partitions merged; the data stream is re-split; the change is in metrics.jsonl; the same re-split twice
ends bitwise equal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import patience, run_distst, tiny_config, tiny_overrides, write_job

from distst.models.io import read_model_file
from distst.track import read_metrics
from distst.train import Method, TrainContext, train
from distst.train.engine import deepspeed_state_types


def _zero_files(stage_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """The full fp32 masters and Adam moments, per parameter, merged by hand from every rank's ZeRO partition."""
    with torch.serialization.safe_globals(deepspeed_state_types()):
        shapes = torch.load(stage_dir / "mp_rank_00_model_states.pt", weights_only=True)["param_shapes"][0]
        parts = [torch.load(f, weights_only=True)["optimizer_state_dict"]
                 for f in sorted(stage_dir.glob("zero_pp_rank_*_optim_states.pt"))]
    flat = {"fp32": torch.cat([p["single_partition_of_fp32_groups"][0] for p in parts])}
    for key in ("exp_avg", "exp_avg_sq"):
        flat[key] = torch.cat([p["base_optimizer_state"]["state"][0][key] for p in parts])
    masters, moments, offset = {}, {}, 0
    for name, shape in shapes.items():
        numel = shape.numel()
        masters[name] = flat["fp32"][offset:offset + numel].view(shape)
        moments[name] = {k: flat[k][offset:offset + numel].view(shape) for k in ("exp_avg", "exp_avg_sq")}
        offset += numel
    return masters, moments


class Capture(Method):
    """What the engine holds right after the restore, read through DeepSpeed's own accessors."""

    def on_train_start(self, ctx: TrainContext) -> None:
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        module = ctx.engines["main"].module
        self.masters = {n: safe_get_full_fp32_param(p).clone() for n, p in module.named_parameters() if p.requires_grad}
        self.moments = {n: {k: safe_get_full_optimizer_state(p, k).clone() for k in ("exp_avg", "exp_avg_sq")}
                        for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.slow
@pytest.mark.distributed
def test_a_two_process_zero1_checkpoint_resumes_in_one_with_the_merged_optimizer_state(tmp_path: Path) -> None:
    run = tmp_path / "run"
    zero = {"deepspeed__zero_stage": 1}
    run_distst("train", str(write_job(tmp_path / "job.yaml")), *tiny_overrides(run, **zero), "train.steps=4",
               "--nproc", "2", timeout=patience(600))
    masters, moments = _zero_files(run / "checkpoints" / "step_00000004" / "main")

    capture = Capture()
    result = train(tiny_config(run, **zero, train__steps=6), run, capture)  # this process: a world of one
    assert result.steps == 6
    assert capture.masters.keys() == masters.keys() and capture.masters
    for name, value in masters.items():
        assert torch.equal(capture.masters[name], value), name
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(capture.moments[name][key], moments[name][key]), (name, key)
    change = [row for row in read_metrics(run / "metrics.jsonl") if "world_size" in row]
    assert change == [{"step": 4, "world_size": {"from": 2, "to": 1}, "global_batch": {"from": 4, "to": 2}}]
    assert json.loads((run / "summary.json").read_text())["world_size"] == 1
    assert not list((run / "checkpoints").glob("*.universal.tmp"))  # the conversion is removed after the load


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("settings", [("bf16", 2)])  # ZeRO-0 loads natively: the 2 -> 1 test covers the rest
def test_a_one_process_checkpoint_resumes_in_two_the_same_way_every_time(tmp_path: Path, settings: tuple) -> None:
    precision, stage = settings
    job = str(write_job(tmp_path / "job.yaml"))
    first, second = tmp_path / "first", tmp_path / "second"
    extra = (f"deepspeed.precision={precision}", f"deepspeed.zero_stage={stage}")
    run_distst("train", job, *tiny_overrides(first), *extra, "train.steps=4", timeout=patience(600))
    shutil.copytree(first, second)
    for run in (first, second):
        proc = run_distst("train", job, *tiny_overrides(run), *extra, "train.steps=6", "--nproc", "2", timeout=patience(600))
        assert "resumes at step 4 with 2 process(es) instead of 1" in proc.stdout + proc.stderr
    weights = [read_model_file(run / "model.pt")[1] for run in (first, second)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    summary = json.loads((first / "summary.json").read_text())
    assert (summary["steps"], summary["world_size"]) == (6, 2)
