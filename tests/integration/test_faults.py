"""Divergence stops at the first non-finite loss and keeps the last good checkpoint; JSON never holds NaN; NaN
weights are never stylised; and the fault record: an IMP job killed twice ends bitwise equal
(``distst bench faults`` kills it 20 times)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_config, tiny_overrides, write_job
from PIL import Image

from distst.bench.faults import fault_record
from distst.cli import main
from distst.config import model_section
from distst.models import build
from distst.models.io import save_model
from distst.track import MetricsLog
from distst.train import checkpoint, train
from distst.train.divergence import TrainingDiverged


def strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_jsonl_records_non_finite_values_as_null(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"step": 1, "loss": math.nan, "terms": {"style": math.inf, "content": -math.inf}, "lr": 1e-3})
    assert strict_json((tmp_path / "metrics.jsonl").read_text()) == \
        {"step": 1, "loss": None, "terms": {"style": None, "content": None}, "lr": 1e-3}


@pytest.mark.slow
def test_divergence_stops_at_the_first_non_finite_loss_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    job = write_job(tmp_path / "job.yaml")
    assert main(["train", str(job), *tiny_overrides(out, train__lr=1e8, train__steps=6,
                                                     train__checkpoint_every=1)]) == 2
    err = capsys.readouterr().err  # in-process, a progress bar may share the line: from the error on
    errors = [ln[ln.index("distst train: error:"):] for ln in err.splitlines() if "distst train: error:" in ln]
    assert len(errors) == 1
    line = errors[0]
    assert line.startswith("distst train: error: training diverged at step ")
    step = int(line.split("at step ")[1].split(":")[0])
    assert "non-finite loss (content=" in line and "loss=nan" in line and "style=" in line
    saved = checkpoint.complete_checkpoints(out / "checkpoints")
    assert saved and [int(p.name.split("_")[1]) for p in saved][-1] == step - 1  # nothing of the NaN step
    assert f"the last good checkpoint, {saved[-1]}, is kept" in line
    for path in (saved[-1] / "main").glob("*model_states.pt"):
        weights = torch.load(path, weights_only=False)["module"]
        assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    assert not (out / "summary.json").exists() and not (out / "model.pt").exists()
    for line in (out / "metrics.jsonl").read_text().splitlines():
        strict_json(line)
    with pytest.raises(TrainingDiverged, match=f"at step {step}: non-finite loss"):  # a rerun diverges again
        train(tiny_config(out, train__lr=1e8, train__steps=6, train__checkpoint_every=1), out)


def test_stylize_refuses_a_model_file_with_non_finite_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = build(model_section(name="adain", width=0.125))
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.startswith("decoder"))[0] = math.nan
    save_model(model, tmp_path / "model.pt")
    image = Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8))
    image.save(tmp_path / "content.png")
    image.save(tmp_path / "style.png")
    code = main(["stylize", "--checkpoint", str(tmp_path / "model.pt"), "--content", str(tmp_path / "content.png"),
                 "--style", str(tmp_path / "style.png"), "--out", str(tmp_path / "out.png")])
    assert code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds NaN or infinite values (weights of a diverged run)" in line and line.count("\n") == 0
    assert not (tmp_path / "out.png").exists()


@pytest.mark.slow
def test_imp_killed_twice_ends_bitwise_equal(tmp_path: Path) -> None:
    record = fault_record(2, tmp_path, seed=1, steps=8)
    assert record.failures == [] and record.final_exit == 0
    assert record.kills_delivered == 2
    assert record.levels_lost == 0
    assert record.mismatches == []
