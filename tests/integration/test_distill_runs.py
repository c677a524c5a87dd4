"""Distillation inside real runs: IMP levels and a channel method's fine-tuning learn from the run's own dense
step; the model files keep the student's layout; a stop and resume with an adapter is bitwise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from helpers import tiny_config

from distst.models.io import read_model_file
from distst.prune import run_schedule
from distst.records import Record
from distst.stop import StopRequest

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
