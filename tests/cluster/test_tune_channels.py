"""distst tune on channel-pruning jobs: sweep-file checks of the channel kind, budgeted E from stage records,
the longest trial for ASHA, and a sweep of 2 tiny ICCP trials on a real local Ray (2 CPUs, no mocks)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, SAMPLE

from distst.config import ConfigError
from distst.prune.channels.runner import ChannelSchedule, budgeted_error, channel_rows
from distst.prune.lottery import ImpSchedule
from distst.records import record_path, step_records
from distst.sweep import load_sweep
from distst.sweep.kinds import TrialKind

# Ray clusters are not run two at a time: every Ray test runs on one xdist worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("ray")

ICCP_JOB = REPO / "jobs" / "local" / "iccp_adain.yaml"
IMP_JOB = REPO / "jobs" / "local" / "imp_adain.yaml"
TINY: dict[str, Any] = {
    "model.width": 0.125, "data.content": f"{SAMPLE}/content-{{000000..000001}}.tar",
    "data.style": f"{SAMPLE}/style-{{000000..000001}}.tar", "data.crop": 32, "data.batch_size": 2,
    "data.workers": 0, "data.shuffle_buffer": 16, "data.eval_pairs": 2, "train.steps": 2,
    "train.checkpoint_every": 2, "train.eval_every": 2, "train.log_every": 1, "train.lr": 1e-3,
    "prune.sparsify_steps": 2, "prune.finetune_steps": 2, "prune.sides": ["encoder"], "prune.min_channels": 1,
    "tracking.backend": "none",
}


def write_sweep(path: Path, job: Path = ICCP_JOB, **fields: Any) -> Path:
    body = {"name": path.stem, "job": str(job), "overrides": dict(TINY if job == ICCP_JOB else {}),
            "objective": {"metric": "total_error", "mode": "min"}, **fields}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


# --- sweep files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("job, fields, message", [
    (ICCP_JOB, {"objective": {"metric": "extreme_sparsity"}},
     "unknown metric 'extreme_sparsity'; channel-pruning trials report: total_error, content_error, style_error, "
     "macs, params, stage_index, dense_total_error, macs_ratio, budgeted_error, training_iteration"),
    (ICCP_JOB, {"objective": {"metric": "budgeted_eror", "mode": "min", "macs_budget": 10}},
     "did you mean 'budgeted_error'?"),
    (ICCP_JOB, {"objective": {"metric": "budgeted_error", "mode": "min"}},
     "objective.macs_budget: required when objective.metric is budgeted_error"),
    (ICCP_JOB, {"objective": {"metric": "budgeted_error", "macs_budget": 0}}, "objective.macs_budget: Input should be"),
    (ICCP_JOB, {"objective": {"metric": "budgeted_error", "macs_budget": "lots"}}, "objective.macs_budget"),
    (IMP_JOB, {"objective": {"metric": "total_error", "macs_budget": 10}},
     "objective.macs_budget: IMP trials report no budgeted_error"),
    (IMP_JOB, {"objective": {"metric": "macs"}}, "unknown metric 'macs'; IMP trials report: total_error"),
    (ICCP_JOB, {"space": {"prune.method": {"grid": ["iccp", "imp"]}}},
     "space.prune.method='imp': makes a prune.method=imp job, not a channel-pruning one"),
    (ICCP_JOB, {"space": {"prune.ratios": {"choice": [[0.3, 0.857], [0.5, 1.2]]}}}, "prune.ratios"),
    (REPO / "jobs" / "local" / "adain.yaml", {}, "sweeps run IMP (prune.method=imp) or channel-pruning "
                                                 "(prune.method=cpst|iccp|l2) trials; got prune.method=none"),
])
def test_channel_sweep_files_fail_in_one_line_naming_the_key(tmp_path: Path, job: Path, fields: dict,
                                                             message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_sweep(write_sweep(tmp_path / "bad.yaml", job, **fields))
    assert message in str(err.value)


def test_a_budget_in_exponent_notation_and_list_values_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    # PyYAML reads 1.5e9 (no sign in the exponent) as a string.
    path.write_text(yaml.safe_dump({"job": str(ICCP_JOB), "overrides": TINY,
                                    "space": {"prune.ratios": {"choice": [[0.3, 0.857], [0.5]]}}},
                                   sort_keys=False) + "objective: {metric: budgeted_error, mode: min, macs_budget: 1.5e9}\n")
    spec = load_sweep(path)
    assert spec.objective.macs_budget == 1_500_000_000
    assert spec.kind().schedule is ChannelSchedule
    assert spec.trial_config({"prune.ratios": [0.5]}).prune.ratios == [0.5]


def test_the_longest_trial_counts_train_stages_over_the_space(tmp_path: Path) -> None:
    """ICCP trains the dense model, then sparsifies and fine-tunes per ratio and side: 1 + 2 * ratios * sides
    train stages (ASHA's max_t); the longest comes from the combination of the longest lists."""
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", space={
        "prune.ratios": {"choice": [[0.5], [0.3, 0.5, 0.5]]},
        "prune.sides": {"choice": [["encoder"], ["encoder", "decoder"]]}}))
    assert spec.max_iterations() == 1 + 2 * 3 * 2
    one_ratio = load_sweep(write_sweep(tmp_path / "one.yaml", space={"prune.ratios": {"grid": [[0.5], [0.75]]}}))
    assert one_ratio.max_iterations() == 1 + 2, "the base job's 2 ratios are no trial's"
    assert ChannelSchedule.iterations(spec.base_config()) == 1 + 2 * 2 * 1  # the job's 2 ratios, TINY's 1 side
    imp = load_sweep(write_sweep(tmp_path / "imp.yaml", IMP_JOB, space={"prune.rounds": {"grid": [1, 4]}}))
    assert imp.max_iterations() == 5 and imp.kind().schedule is ImpSchedule


# --- rows from stage records -------------------------------------------------------------------------

def _record(index: int, kind: str, macs: int, error: float | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"index": index, "stage": f"s{index}", "kind": kind, "widths": {},
                              "params": {"encoder": macs // 20, "total": macs // 10},
                              "macs": {"encoder": macs // 2, "total": macs}}
    errors = {"total_error": error, "content_error": 0.25 * (error or 0), "style_error": 0.75 * (error or 0)}
    record["errors" if kind == "train" else "before_finetune"] = errors
    return record


RECORDS = [_record(0, "train", 1000, 10.0), _record(1, "train", 1000, 11.0), _record(2, "prune", 400, 30.0),
           _record(3, "train", 400, 12.0), _record(4, "prune", 100, 40.0), _record(5, "train", 100, 15.0)]


def test_one_row_per_train_stage_with_budgeted_error(tmp_path: Path) -> None:
    budget = 200
    rows = channel_rows(RECORDS, budget)
    assert [r["stage_index"] for r in rows] == [0, 1, 3, 5], "prune stages are not Tune iterations"
    for row, record in zip(rows, [RECORDS[i] for i in (0, 1, 3, 5)], strict=True):
        error, macs = record["errors"]["total_error"], record["macs"]["total"]
        assert row["total_error"] == error and row["macs"] == macs and row["params"] == record["params"]["total"]
        assert row["content_error"] == record["errors"]["content_error"]
        assert row["dense_total_error"] == 10.0 and row["macs_ratio"] == 1000 / macs
        # Within the budget: E; over it: E scaled by how far over.
        assert row["budgeted_error"] == (error if macs <= budget else error * macs / budget)
    assert [r["budgeted_error"] for r in rows] == [50.0, 55.0, 24.0, 15.0]
    assert budgeted_error(7.0, 200, 200) == 7.0 and budgeted_error(7.0, 300, 200) == pytest.approx(10.5)
    assert all("budgeted_error" not in r for r in channel_rows(RECORDS)), "no budget, no budgeted E"

    # The same rows from a run directory's step records, as the trial reads them while the run goes on.
    for record in RECORDS[:4]:
        path = record_path(tmp_path, f"{record['index']:02d}_{record['stage']}")
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(record))
    (tmp_path / "04_s4").mkdir()  # a stage in progress: no record yet
    kind = TrialKind(ChannelSchedule, load_sweep(write_sweep(tmp_path / "s.yaml")).base_config())
    assert kind.rows(None, tmp_path, budget) == rows[:3]  # type: ignore[arg-type]


# --- a sweep on a real local Ray ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_two_tiny_iccp_trials_report_every_train_stage(ray_local, tmp_path: Path) -> None:
    """Optuna samples a list-valued prune.ratios and lam for 2 ICCP trials (encoder side only), 2 at a time:
    each reports one Tune iteration per train stage, with budgeted E from its own stage records, and the
    results table ranks them by it."""
    from distst.sweep.results import write_results
    from distst.sweep.runner import run_sweep

    budget = 2_000_000  # MACs at 32 px: dense 12.2 M, so the first stages are over it
    spec = load_sweep(write_sweep(
        tmp_path / "iccp.yaml", space={"prune.ratios": {"choice": [[0.5], [0.75]]},
                                       "prune.lam": {"loguniform": [1e-5, 1e-3]}},
        objective={"metric": "budgeted_error", "mode": "min", "macs_budget": budget},
        search={"algorithm": "optuna", "samples": 2, "seed": 0}, resources={"cpus": 1}, concurrency=2,
        max_failures=0))
    outcome = run_sweep(spec, tmp_path / "out", resume=False)
    written = write_results(spec, outcome.results, tmp_path / "out")

    assert not outcome.interrupted and [r.error for r in outcome.results] == [None, None]
    for result in outcome.results:
        run_dir = tmp_path / "out" / "trials" / result.metrics["trial_id"]
        records = step_records(run_dir)
        trained = [r for r in records if r["kind"] == "train"]
        assert [r["stage"] for r in trained] == ["dense", "sparsify_1_encoder", "finetune_1_encoder"]
        reported = result.metrics_dataframe
        assert list(reported["training_iteration"]) == [1, 2, 3]
        assert list(reported["stage_index"]) == [r["index"] for r in trained]
        expected = [budgeted_error(r["errors"]["total_error"], r["macs"]["total"], budget) for r in trained]
        assert list(reported["budgeted_error"]) == pytest.approx(expected)
        slimmed = trained[0]["macs"]["total"] / trained[-1]["macs"]["total"]
        assert reported["macs_ratio"].iloc[-1] == pytest.approx(slimmed) and slimmed > 1.5, "the encoder was slimmed"
        assert json.loads((run_dir / "summary.json").read_text())["settings"]["ratios"] == result.config["prune.ratios"]

    with (tmp_path / "out" / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["status"] for r in table] == ["done", "done"]
    values = [float(r["budgeted_error"]) for r in table]
    assert values == sorted(values), "best (lowest budgeted E) first"
    assert {r["prune.ratios"] for r in table} <= {"0.5", "0.75"} and all(float(r["macs_ratio"]) > 1.5 for r in table)
    assert written["plot"] == tmp_path / "out" / "e_vs_macs.png" and written["plot"].stat().st_size > 0
