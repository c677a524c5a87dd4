"""Dense training under ZeRO-3 with 2 gloo ranks, at a width whose large convs really are partitioned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import toy_models  # noqa: F401 - registers the toy methods
from helpers import patience, run_distst, tiny_config, tiny_overrides, write_job

from distst import registry
from distst.config import ConfigError, model_section
from distst.models import create
from distst.models.io import load_model
from distst.preflight import problems
from distst.track import read_metrics
from distst.train import train

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

# At width 0.5, conv4_1 has 256 x 128 x 9 = 294,912 weights: above ZeRO-3's default persistence threshold
# (100,000), so it is partitioned across the ranks (at width 0.125 nothing would be, and the test would prove
# nothing about ZeRO-3).
WIDTH = 0.5


def test_zero3_two_ranks_evaluate_write_a_whole_model_and_resume(tmp_path: Path) -> None:
    job = write_job(tmp_path / "job.yaml")
    out = tmp_path / "run"
    settings = {"model__width": WIDTH, "deepspeed__zero_stage": 3, "train__eval_every": 2,
                "tracking__image_every": 2, "data__crop": 32}
    run_distst("train", str(job), "--nproc", "2", *tiny_overrides(out, train__steps=2, **settings), timeout=patience(600))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    reference = create(model_section(name="adain", width=WIDTH))
    model, _ = load_model(out)  # loads strictly: every tensor whole, none a partition
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert summary["params"]["total"] == sum(p.numel() for p in reference.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    assert summary["nonzero_params"]["total"] == nonzero
    assert summary["final"]["total_error"] > 0 and (out / "samples" / "step_00000002.png").is_file()

    run_distst("train", str(job), "--nproc", "2", *tiny_overrides(out, train__steps=3, **settings), timeout=patience(600))
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]  # resumed at step 2, not restarted


def test_one_zero3_rule_refuses_only_methods_that_need_whole_parameters(tmp_path: Path) -> None:
    """Preflight and trainer ask the method's record: the same refusal for a method that edits weights in place
    (the toy gate, folded at the end), none for one that only adds a loss (it trains under ZeRO-3)."""
    needs = tiny_config(tmp_path / "gate", deepspeed__zero_stage=3, prune__method="gate_l1")
    gate = registry.method_record("gate_l1")
    reason = gate.zero3_problem(3)
    assert reason and reason in problems(needs)
    with pytest.raises(ConfigError) as refused:
        train(needs, tmp_path / "gate", gate.factory(needs))
    assert str(refused.value) == reason and not (tmp_path / "gate" / "model.pt").exists()

    free = tiny_config(tmp_path / "l1", deepspeed__zero_stage=3, prune__method="output_l1", train__steps=2)
    assert not [p for p in problems(free) if "zero_stage" in p]
    result = train(free, tmp_path / "l1", registry.method_record("output_l1").factory(free))
    assert result.steps == 2 and any("output_l1" in row for row in read_metrics(tmp_path / "l1" / "metrics.jsonl"))
