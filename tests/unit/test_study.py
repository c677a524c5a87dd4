"""Study files and the Pareto front (no run trained: configs and schedules only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from distst.config import ConfigError
from distst.study.pareto import pareto_front
from distst.study.spec import load_study, pipeline_steps

LOCAL = {"imp": "jobs/local/imp_adain.yaml", "iccp": "jobs/local/iccp_adain.yaml"}


def write(path: Path, **fields: Any) -> Path:
    tree = {"dense": "jobs/local/adain.yaml", "methods": dict(LOCAL), **fields}
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def test_pareto_front_is_the_non_dominated_points() -> None:
    points = [(1.0, 5.0), (2.0, 3.0), (3.0, 3.5), (4.0, 1.0), (2.5, 2.0), (5.0, 1.0), (1.0, 6.0)]
    # (3,3.5) by (2,3); (2,3) by (2.5,2)? no: cheaper. (5,1) by (4,1); (1,6) by (1,5).
    assert pareto_front(points) == [0, 1, 4, 3]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]
    assert pareto_front([]) == []


def test_dense_baseline_gets_the_longest_pipelines_steps(tmp_path: Path) -> None:
    study = load_study(write(tmp_path / "s.yaml"))
    names = [r.name for r in study.runs]
    assert names == ["dense", "imp", "iccp"]
    longest = max(pipeline_steps(r.cfg) for r in study.runs[1:])
    assert study.runs[0].cfg.train.steps == longest > study.runs[1].cfg.train.steps
    assert study.name == "s"


def test_distilled_twins_carry_the_studys_weight_and_learn_from_its_dense_run(tmp_path: Path) -> None:
    study = load_study(write(tmp_path / "s.yaml", distill=[False, True], distill_weight=0.5))
    assert [r.name for r in study.runs] == ["dense", "imp", "imp_distill", "iccp", "iccp_distill"]
    assert [r.cfg.distill.weight for r in study.runs] == [0.0, 0.0, 0.5, 0.0, 0.5]
    assert [r.learns_from_dense for r in study.runs] == [False, False, True, False, True]
    own = load_study(write(tmp_path / "own.yaml", distill=[True], teacher="own"))
    assert not any(r.learns_from_dense for r in own.runs) and not any(r.cfg.distill.teacher for r in own.runs)
    # A one-run method (QAT) has no dense step of its own, but the study's dense run can teach it.
    qat = load_study(write(tmp_path / "qat.yaml", methods={"qat": "jobs/local/qat_adain.yaml"}, distill=[True]))
    assert [(r.name, r.learns_from_dense) for r in qat.runs] == [("dense", False), ("qat_distill", True)]


def test_measure_section_changes_only_what_is_measured(tmp_path: Path) -> None:
    plain = load_study(write(tmp_path / "plain.yaml"))
    assert plain.measuring() is plain.runs[0].cfg
    study = load_study(write(tmp_path / "s.yaml", measure={"pairs": 6, "size": 128}))
    assert (study.measuring().data.eval_pairs, study.measuring().data.eval_size) == (6, 128)
    # The runs (and so what a re-run reuses) are those of the study without the section.
    assert [r.cfg for r in study.runs] == [r.cfg for r in plain.runs]


@pytest.mark.parametrize(("fields", "message"), [
    ({"methods": {"slim": "jobs/local/adain.yaml"}}, "methods.slim: unknown method"),
    ({"measure": {"pair": 4}}, "measure.pair: unknown key"),
    ({"methods": {"iccp": "jobs/local/imp_adain.yaml"}}, "methods.iccp: jobs/local/imp_adain.yaml has prune.method=imp"),
    ({"methods": {"imp": "jobs/local/imp_sanet.yaml"}}, "methods.imp: jobs/local/imp_sanet.yaml trains sanet"),
    ({"distill": {"dense": [True]}}, "distill.dense: the equal-budget dense run cannot be distilled"),
    ({"distill": {"l2": [True]}}, "distill.l2: not a method of this study"),
    ({"methods": {"qat": "jobs/local/qat_adain.yaml"}, "distill": [True], "teacher": "own"},
     "distill.qat: with teacher: own a one-run method has no dense step"),
    ({"concurency": 2}, "concurency: unknown key (did you mean 'concurrency'?)"),
    ({"overrides": {"train.stpes": 3}}, "dense: "),
])
def test_bad_study_files_end_in_one_line_naming_the_key(tmp_path: Path, fields: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_study(write(tmp_path / "bad.yaml", **fields))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_teacher_of_another_model_is_refused(tmp_path: Path) -> None:
    from distst.config import model_section
    from distst.models import create
    from distst.models.io import save_model

    teacher = save_model(create(model_section(name="sanet", width=0.125), weights=False), tmp_path / "t.pt")
    with pytest.raises(ConfigError, match=r"^teacher: .* is a sanet model; this study's model is adain$"):
        load_study(write(tmp_path / "bad.yaml", teacher=str(teacher)))


def test_final_models_and_finished_runs(tmp_path: Path) -> None:
    import json

    from distst.study.finals import final_model, finished

    imp = tmp_path / "imp"
    imp.mkdir()
    levels = [{"level": 0, "sparsity": 0.0, "matching": True}, {"level": 1, "sparsity": 0.2, "matching": True},
              {"level": 2, "sparsity": 0.36, "matching": False}]
    (imp / "summary.json").write_text(json.dumps({"kind": "imp", "levels": levels, "complete": False}))
    assert not finished(imp)
    assert final_model(imp, "imp") == (imp / "level_1" / "model.pt", "sparsest matching: level 1")
    levels[1]["matching"] = False
    (imp / "summary.json").write_text(json.dumps({"kind": "imp", "levels": levels, "complete": True}))
    assert finished(imp)
    assert final_model(imp, "imp") == (imp / "level_2" / "model.pt", "last level (none matching): level 2")
    assert final_model(tmp_path / "c", "iccp")[0] == tmp_path / "c" / "slim" / "model.pt"
    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "summary.json").write_text("{}")
    assert not finished(dense)
    (dense / "model.pt").write_bytes(b"")
    assert finished(dense) and final_model(dense, "dense")[0] == dense / "model.pt"


def test_every_model_is_measured_with_one_loss_network(tmp_path: Path) -> None:
    from distst.config import load_config
    from distst.models import create
    from distst.models.io import save_model
    from distst.study.measure import LOSS_VGG, measure_all

    dense = load_config("jobs/local/adain.yaml", {"model.width": 0.125, "data.crop": 32, "data.eval_pairs": 2})
    models = {name: create(dense.model, weights=False) for name in ("a", "b")}
    convs = [m.weight for m in models["b"].modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    with torch.no_grad():
        convs[-1].zero_()  # a pruned layer: its share of the weights is the sparsity
    paths = {name: save_model(model, tmp_path / f"{name}.pt") for name, model in models.items()}
    rows = measure_all(paths, dense, tmp_path)
    assert rows["b"]["sparsity"] == pytest.approx(convs[-1].numel() / sum(w.numel() for w in convs), abs=1e-12)
    assert (tmp_path / LOSS_VGG).is_file()
    assert rows["a"]["params"] == rows["b"]["params"] > 0 and rows["a"]["macs"] > 0
    assert rows["a"]["sparsity"] == 0.0
    assert rows["a"]["total_error"] != rows["b"]["total_error"]  # two different models, one network
    again = measure_all({"a": paths["a"]}, dense, tmp_path)
    assert again["a"]["total_error"] == rows["a"]["total_error"]


def test_report_has_one_row_per_model_the_ratios_and_the_fronts(tmp_path: Path) -> None:
    from distst.config import load_config
    from distst.models import create
    from distst.models.io import save_model
    from distst.study.report import study_rows, time_models, write_report

    section = load_config("jobs/local/adain.yaml", {"model.width": 0.125}).model
    paths = {n: save_model(create(section, weights=False), tmp_path / f"{n}.pt") for n in ("dense", "iccp")}
    timed = time_models(paths, [(32, 32)], threads=1, repeats=1, warmup=0)
    runs = [{"name": "dense", "method": "dense", "distill": False, "final": "final"},
            {"name": "iccp", "method": "iccp", "distill": False, "final": "slimmed"}]
    measured = {"dense": {"total_error": 2.0, "params": 10, "sparsity": 0.0, "macs": 100, "file_mb": 1.0},
                "iccp": {"total_error": 3.0, "params": 5, "sparsity": 0.25, "macs": 50, "file_mb": 0.5}}
    rows = study_rows(runs, measured, timed)
    assert [r["e_ratio"] for r in rows] == [1.0, 1.5] and all(r["pareto_macs"] for r in rows)
    summary = write_report(tmp_path, "tiny", rows)
    assert summary["kind"] == "study" and len(summary["models"]) == 2
    text = (tmp_path / "report.md").read_text()
    assert "| iccp | iccp | no | slimmed | 5 | 25.0% |" in text and "ms_32_32" in text
    assert (tmp_path / "e_vs_macs.png").is_file() and (tmp_path / "e_vs_latency.png").is_file()


@pytest.mark.parametrize("path", ["jobs/local/study_adain.yaml", "jobs/study_adain.yaml"])
def test_shipped_study_files_load(path: str) -> None:
    study = load_study(path)
    assert study.runs[0].name == "dense" and len(study.runs) > 4
