"""A tiny study end to end on a local Ray: every run present, the equal-budget dense run, one E per model,
finished runs reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import SAMPLE

from distst.prune.schedule import run_schedule  # noqa: F401  (the runs' driver is importable before Ray starts)
from distst.records import read_summary
from distst.study import pipeline
from distst.study.finals import final_model, finished
from distst.study.measure import measure_all
from distst.study.runner import run_dir, run_study
from distst.study.spec import load_study, pipeline_steps

RAY = pytest.mark.xdist_group("ray")

TINY = {
    "model.width": 0.125, "data.content": f"{SAMPLE}/content-{{000000..000001}}.tar",
    "data.style": f"{SAMPLE}/style-{{000000..000001}}.tar", "data.crop": 32, "data.batch_size": 2,
    "data.workers": 0, "data.shuffle_buffer": 16, "data.eval_pairs": 2, "train.steps": 2,
    "train.checkpoint_every": 2, "train.eval_every": 2, "train.log_every": 1, "train.lr": 1e-3,
    "tracking.backend": "none",
}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@RAY
@pytest.mark.slow
def test_tiny_study_end_to_end(ray_local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers import REPO

    monkeypatch.chdir(REPO)
    file = tmp_path / "tiny.yaml"
    file.write_text(yaml.safe_dump({
        "dense": "jobs/local/adain.yaml",
        "methods": {"imp": "jobs/local/imp_adain.yaml", "iccp": "jobs/local/iccp_adain.yaml"},
        "distill": {"iccp": [False, True]}, "overrides": TINY, "concurrency": 2,
        "bench": {"sizes": [[32, 32]], "threads": 1, "int8": True, "calibration_pairs": 2},
        "measure": {"pairs": 3, "size": 40},  # measuring only: no run's config changes
        # The study's table goes where the dense run's tracking says: W&B, offline here.
        "run_overrides": {"dense": {"tracking.backend": "wandb", "tracking.mode": "offline"},
                          "imp": {"prune.rounds": 1, "prune.rewind_step": 0},
                          "iccp": {"prune.ratios": [0.5], "prune.sides": ["decoder"], "prune.sparsify_steps": 2,
                                   "prune.finetune_steps": 2, "prune.min_channels": 2}},
    }, sort_keys=False))
    study = load_study(file)
    out = tmp_path / "out"
    # The distilled run goes after the rest: its teacher is the dense run's model file.
    assert run_study(study, file, out)[-1] == "iccp_distill"
    assert {r.name for r in study.runs} == {"dense", "imp", "iccp", "iccp_distill"}
    for run in study.runs:
        assert finished(run_dir(out, run.name)), run.name
    dense_steps = read_summary(run_dir(out, "dense"))["steps"]
    assert dense_steps == max(pipeline_steps(r.cfg) for r in study.runs[1:]) == study.runs[0].cfg.train.steps
    paths = {r.name: final_model(run_dir(out, r.name), r.method)[0] for r in study.runs}
    measuring = study.measuring()
    assert (measuring.data.eval_pairs, measuring.data.eval_size) == (3, 40)
    assert all(r.cfg.data.eval_pairs == 2 and r.cfg.data.eval_size is None for r in study.runs)
    rows = measure_all(paths, measuring, out)
    assert set(rows) == {"dense", "imp", "iccp", "iccp_distill"} and all(r["total_error"] > 0 for r in rows.values())
    teacher = yaml.safe_load((run_dir(out, "iccp_distill") / "config.yaml").read_text())["distill"]["teacher"]
    assert Path(teacher) == run_dir(out, "dense") / "model.pt"
    distilled = [json.loads(line) for d in run_dir(out, "iccp_distill").glob("*_finetune_*")
                 for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("distill", 0) > 0 for row in distilled)
    assert rows["iccp"]["macs"] < rows["dense"]["macs"]
    stamps = {n: p.stat().st_mtime_ns for n, p in paths.items()}
    assert run_study(load_study(file), file, out) == []  # re-run: every run reused, no Ray work
    summary = pipeline.study(file, out, repeats=1)  # the whole command's work: runs reused, then measured and timed
    assert stamps == {n: p.stat().st_mtime_ns for n, p in paths.items()}
    assert [m["name"] for m in summary["models"]] == ["dense", "imp", "iccp", "iccp_distill"]
    assert {m["name"]: m["total_error"] for m in summary["models"]} == {n: r["total_error"] for n, r in rows.items()}
    assert json.loads((out / "summary.json").read_text())["kind"] == "study" and (out / "report.md").is_file()
    # Every model ships as ONNX: the fp32 graph's E is the torch model's; int8 is measured and timed beside them.
    for model in summary["models"]:
        graphs = model["onnx"]
        assert graphs["fp32"]["total_error"] == pytest.approx(model["total_error"], rel=1e-3), model["name"]
        assert graphs["int8"]["total_error"] > 0 and graphs["int8"]["ms_32_32"] > 0
    assert "| iccp | onnx int8 |" in (out / "report.md").read_text()
    # int8 calibrated on the images after the measured pairs, never on them.
    manifest = json.loads((out / "exports" / "iccp" / "manifest.json").read_text())["int8"]
    assert (manifest["calibration_skip"], manifest["calibration_pairs"], manifest["calibration_size"]) == (3, 2, 40)
    tables = list((out / "wandb").glob("offline-run-*/files/media/table/study/table_*.table.json"))
    assert len(tables) == 1 and len(json.loads(tables[0].read_text())["data"]) == 4
