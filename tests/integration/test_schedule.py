"""The one schedule driver, with a toy schedule the driver has never heard of; the importance objects; the
one dependency-graph trace per prune step; a GAN's set metrics as sweep objectives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import REPO, tiny_config

from distst.models import build
from distst.prune import schedule as driver
from distst.prune.channels import surgery
from distst.prune.channels.importance import FilterNorm, ResponseNorm
from distst.prune.channels.methods import PruneInputs
from distst.prune.lottery import ImpSection
from distst.records import Record, read_summary, record_path, step_records
from distst.reports import base as reports_base
from distst.reports import report_for, write_report
from distst.stop import StopRequest


class ToySchedule(driver.Schedule):
    """Train, write a file (the prune step), train again from the first step's model: no method the driver knows."""

    kind = "toy"

    def steps(self) -> list[driver.Step]:
        return [driver.TrainStep("first", 2),
                driver.PruneStep("mark", lambda folder, records: self._mark(folder, records)),
                driver.TrainStep("second", 2, overrides=lambda records: {
                    "model.init_from": str(self.run_dir / records[0]["dir"] / "model.pt")})]

    @staticmethod
    def _mark(folder: Path, records: list[Record]) -> Record:
        (folder / "marked.txt").write_text("done")
        return {"seen": [r["step"] for r in records]}

    def describe(self, step: driver.Step, step_dir: Path, result: Any) -> Record:
        return {"described": step.name}

    def summary(self, records: list[Record]) -> dict[str, Any]:
        return {"steps_done": [r["step"] for r in records],
                "errors": [r["errors"]["total_error"] for r in records if r["kind"] == "train"]}


class ToyReport(reports_base.Report):
    kind = "toy"
    table_key = "toy/steps"

    def write(self, run_dir: Path, summary: dict[str, Any], out: Path) -> Path:
        (out / "report.md").write_text(f"# toy\n\n{self.table(run_dir, summary)}\n")
        return out / "report.md"

    def table(self, run_dir: Path, summary: dict[str, Any]) -> str:
        return "| step |\n|---|\n" + "\n".join(f"| {s} |" for s in summary["steps_done"])

    def rows(self, summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
        return ["step"], [[s] for s in summary["steps_done"]]

    def headline(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {"steps": len(summary["steps_done"])}


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The schedule a method declares is the one the driver runs: swap IMP's for the toy's for this test only.
    monkeypatch.setattr(ImpSection, "schedule_class", ToySchedule)
    monkeypatch.setitem(reports_base.REPORTS, "toy", ToyReport())


def test_the_driver_runs_stops_and_resumes_a_schedule_it_does_not_know(toy: None, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(out, prune__method="imp", tracking__backend="none")
    stop = StopRequest()
    seen: list[str] = []

    def stop_after_first(record: Record, summary: dict[str, Any]) -> None:
        seen.append(record["step"])
        assert summary["kind"] == "toy" and summary["complete"] == (record["step"] == "second")
        stop.set("test")  # the next train step checkpoints at once and returns

    first = driver.run_schedule(cfg, out, stop=stop, on_step=stop_after_first)
    assert first.stopped and seen == ["first", "mark"]
    assert [r["step"] for r in step_records(out)] == ["first", "mark"]
    assert read_summary(out) == {"kind": "toy", "steps_done": ["first", "mark"],
                                 "errors": [step_records(out)[0]["errors"]["total_error"]], "complete": False}
    assert (out / "mark" / "marked.txt").read_text() == "done"
    assert not (out / "report").exists()

    first_record = record_path(out, "first").read_text()
    resumed = driver.run_schedule(cfg, out, on_step=lambda record, _summary: seen.append(record["step"]))
    assert not resumed.stopped and resumed.summary["complete"]
    assert record_path(out, "first").read_text() == first_record, "a finished step is not run again"
    records = step_records(out)
    assert [(r["index"], r["step"], r["kind"], r["described"]) for r in records] == [
        (0, "first", "train", "first"), (1, "mark", "prune", "mark"), (2, "second", "train", "second")]
    assert records[1]["seen"] == ["first"] and records[2]["steps"] == 2
    second_config = (out / "second" / "config.yaml").read_text()
    assert f"init_from: {out / 'first' / 'model.pt'}" in second_config  # the step's overrides reached train()
    assert json.loads((out / "summary.json").read_text()) == resumed.summary
    report, summary = report_for(out)
    assert isinstance(report, ToyReport) and write_report(out).read_text().count("\n| ") == 1 + 3
    assert (out / "config.yaml").is_file()


def test_a_schedule_that_is_not_sweepable_is_refused_by_the_sweep_up_front(toy: None, tmp_path: Path) -> None:
    from distst.config import ConfigError
    from distst.sweep.kinds import kind_of

    cfg = tiny_config(tmp_path / "run", prune__method="imp", tracking__backend="none")
    with pytest.raises(ConfigError, match=r"sweeps run .*trials; got prune.method=imp"):
        kind_of(cfg)


def test_a_report_of_an_unknown_kind_fails_in_one_line(tmp_path: Path) -> None:
    from distst.reports import ReportError

    (tmp_path / "summary.json").write_text(json.dumps({"kind": "nonesuch"}))
    with pytest.raises(ReportError, match="is of kind 'nonesuch'; distst reports on channels, imp"):
        write_report(tmp_path)


def test_filter_norm_is_the_filter_l2_and_response_norm_sums_responses() -> None:
    model = build(tiny_config(Path("unused")).model)
    layers = model.channel_layers()["encoder"]
    scores = FilterNorm(p=2)(model, [("encoder", "conv4_1")])[("encoder", "conv4_1")]
    weight = layers["conv4_1"].weight.detach()
    expected = torch.sqrt((weight**2).sum(dim=(1, 2, 3)))
    assert torch.allclose(scores, expected) and scores.shape == (weight.shape[0],)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    (response,) = ResponseNorm(images, "relu4_1")(model, [("encoder", "conv4_1")]).values()
    with torch.no_grad():
        feats = model.encoder(images)[model.encoder.tap_names.index("relu4_1")]
    assert torch.allclose(response, sum(feats[i].flatten(1).norm(dim=1) for i in range(2)))


def test_a_prune_step_traces_the_model_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """l2 with mirroring scores two sides and slims: one trace serves the coupled sets and the surgery."""
    traces = []
    original = surgery.dependency_graph
    monkeypatch.setattr(surgery, "dependency_graph", lambda model: traces.append(1) or original(model))
    cfg = tiny_config(tmp_path, prune__method="l2")
    model = build(cfg.model)
    inputs = PruneInputs(cfg, model, tmp_path, surgery.widths(model), lambda: torch.empty(0))
    selection = cfg.prune.select(inputs, iteration=1)
    slimmed = surgery.slim(model, selection, inputs.graph())
    assert len(traces) == 1 and {"encoder", "decoder"} <= set(selection)
    assert surgery.widths(slimmed)["encoder"]["conv3_1"] < surgery.widths(build(cfg.model))["encoder"]["conv3_1"]
    with pytest.raises(ValueError, match="traced from another model"):
        surgery.slim(build(cfg.model), selection, surgery.ChannelGraph(build(cfg.model)))


def test_a_cyclegan_imp_sweep_may_rank_trials_by_fid(tmp_path: Path) -> None:
    import yaml

    from distst.sweep import load_sweep

    path = tmp_path / "gan.yaml"
    path.write_text(yaml.safe_dump({"job": str(REPO / "jobs" / "local" / "imp_cyclegan.yaml"),
                                    "objective": {"metric": "fid", "mode": "min"},
                                    "space": {"prune.rate": {"grid": [0.2, 0.3]}}}))
    kind = load_sweep(path).kind()
    assert {"fid", "kid", "total_error", "extreme_sparsity"} <= set(kind.metrics)
