"""Outputs never go stale: extending a finished run removes its summary.json and model.pt before the first new
step, the new finish writes them again (with their step), and readers refuse outputs older than the run's
checkpoints; an IMP run stopped in a level keeps its finished levels' outputs valid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import StopAt, tiny_config, write_image

from distst.cli import main
from distst.models.io import read_model_file
from distst.outputs import StaleOutputs
from distst.prune import run_schedule
from distst.records import read_summary, record_path
from distst.stop import StopRequest
from distst.study.finals import finished
from distst.train import Method, MethodList, StepInputs, TrainContext, checkpoint, train
from distst.weights import WeightsError

OUTPUTS = ("model.pt", "summary.json")


class SeesOutputs(Method):
    """Records which of the run's outputs exist when the first step of this call trains."""

    def __init__(self) -> None:
        self.at_first_step: list[str] | None = None

    def extra_losses(self, ctx: TrainContext, inputs: StepInputs) -> dict:
        if self.at_first_step is None:
            self.at_first_step = [name for name in OUTPUTS if (ctx.workdir / name).exists()]
        return {}


def steps_of(run: Path) -> tuple[int, int]:
    """(the step model.pt records, the step summary.json records)."""
    return (torch.load(run / "model.pt", weights_only=True)["step"],
            json.loads((run / "summary.json").read_text())["steps"])


def test_extending_a_finished_run_removes_its_outputs_before_the_first_new_step(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    train(tiny_config(run, train__steps=2), run)
    assert steps_of(run) == (2, 2) and finished(run)

    request, seen = StopRequest(), SeesOutputs()
    result = train(tiny_config(run, train__steps=4), run, MethodList([seen, StopAt(3, request)]), stop=request)
    assert result.stopped and result.steps == 3  # as a SIGTERM would: checkpoint step 3, exit 75
    assert seen.at_first_step == [], "the old outputs were still there when step 3 trained"
    assert (f"distst: removed summary.json, model.pt of {run} (the finish at step 2): training goes on to step 4"
            in capsys.readouterr().err)
    assert not any((run / name).exists() for name in OUTPUTS)
    assert checkpoint.complete_checkpoints(run / "checkpoints")[-1].name == "step_00000003"
    assert not finished(run)  # a study resumes it
    with pytest.raises(WeightsError, match="model file .* does not exist"):
        read_model_file(run)

    train(tiny_config(run, train__steps=4), run)
    assert steps_of(run) == (4, 4) and finished(run)
    read_model_file(run)  # current again
    assert read_summary(run)["steps"] == 4


def test_readers_refuse_outputs_older_than_the_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, old = tmp_path / "run", tmp_path / "old"
    train(tiny_config(run, train__steps=2), run)
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("checkpoints"))
    train(tiny_config(run, train__steps=4), run)
    for name in OUTPUTS:  # as a distst from before the retirement left an extended run: the old finish's files
        shutil.copy(old / name, run / name)

    newest = run / "checkpoints" / "step_00000004"
    expected = (f"{run / 'model.pt'} is of step 2, but the run's newest checkpoint, {newest}, is of step 4: the "
                "run was trained on past that finish and has not finished again; finish the run: re-run `distst "
                "train JOB`")
    with pytest.raises(StaleOutputs) as caught:
        read_model_file(run)
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)
    with pytest.raises(StaleOutputs, match="summary.json is of step 2, but the run's newest checkpoint"):
        read_summary(run)
    assert not finished(run)
    with pytest.raises(StaleOutputs):  # model.init_from, before anything starts
        train(tiny_config(tmp_path / "child", model__init_from=str(run / "model.pt")), tmp_path / "child")

    content, style = write_image(tmp_path / "c.png"), write_image(tmp_path / "s.png", seed=1)
    code = main(["stylize", "--checkpoint", str(run), "--content", str(content), "--style", str(style),
                 "--content-size", "32", "--style-size", "32", "--out", str(tmp_path / "out.png")])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"distst stylize: error: {caught.value}"

    blob = torch.load(run / "model.pt", weights_only=True)
    del blob["step"]  # a model file from before the step was recorded: the summary beside it tells
    torch.save(blob, run / "model.pt")
    with pytest.raises(StaleOutputs, match="model.pt is of step 2"):
        read_model_file(run)

    train(tiny_config(run, train__steps=4), run)  # "finish the run": the finish writes both again
    assert steps_of(run) == (4, 4)
    read_model_file(run)


class StopInLevel(StopRequest):
    """Asks to stop once a level's training has begun (its metrics.jsonl exists): an IMP run stopped mid-level."""

    def __init__(self, level_dir: Path) -> None:
        super().__init__()
        self.level_dir = level_dir

    def is_set(self) -> bool:
        return super().is_set() or (self.level_dir / "metrics.jsonl").is_file()


def test_an_imp_run_stopped_in_a_level_keeps_its_finished_levels_outputs_valid_and_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(run, prune__method="imp", prune__rounds=1, prune__rewind_step=2, train__steps=4)
    assert run_schedule(cfg, run, stop=StopInLevel(run / "level_1")).stopped
    assert record_path(run, "level_0").is_file() and not record_path(run, "level_1").exists()
    assert steps_of(run / "level_0") == (4, 4)
    read_model_file(run / "level_0")  # the finished level is current beside its own checkpoints
    dense = (run / "level_0" / "model.pt").read_bytes()
    assert read_summary(run)["complete"] is False
    assert not (run / "level_1" / "model.pt").exists()
    assert checkpoint.complete_checkpoints(run / "level_1" / "checkpoints")[-1].name == "step_00000001"

    result = run_schedule(cfg, run)
    assert not result.stopped and result.summary["complete"]
    assert (run / "level_0" / "model.pt").read_bytes() == dense  # never retrained, never removed
    assert steps_of(run / "level_1") == (4, 4)
    for level in (0, 1):
        read_model_file(run / f"level_{level}")
