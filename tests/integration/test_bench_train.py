"""``distst bench train`` at its smallest: both precisions through the real loop in one run, their start-up,
training rate and the loader's rate in the JSON and the table (no timing thresholds); bad input is one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import patience, run_distst, tiny_overrides

from distst.bench.train import DATA_BOUND_MARGIN, LOADER_MIN_STEPS, verdict
from distst.cli import main
from distst.commands.bench import BENCHES


def test_both_precisions_report_start_up_training_and_loader_rates(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = run_distst("bench", "train", "--steps", "3", "--warmup", "1", "--json", str(out),
                      *tiny_overrides(tmp_path / "not-used"), timeout=patience(240))
    report = json.loads(out.read_text())
    rows = report["precisions"]
    assert list(rows) == ["fp32", "bf16"]  # the default: both, in this order, in one run
    loader = report["loader"]["images_per_s"]
    assert math.isfinite(loader) and loader > 0
    assert report["loader"]["images_per_process"] == LOADER_MIN_STEPS * 2  # more than 3 steps of data.batch_size=2
    for row in rows.values():
        assert row["images_per_process"] == 3 * 2
        for key in ("startup_s", "train_images_per_s_per_process", "train_seconds"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert row["loader_over_train"] == pytest.approx(loader / row["train_images_per_s_per_process"])
        assert row["verdict"] == verdict(row["loader_over_train"])
    ratio = rows["bf16"]["train_images_per_s_per_process"] / rows["fp32"]["train_images_per_s_per_process"]
    assert report["bf16_over_fp32"] == pytest.approx(ratio)
    assert report["setup_s"] > 0 and report["world_size"] == 1 and report["steps"] == 3 and report["warmup"] == 1
    assert (report["crop"], report["batch_size"], report["workers"]) == (32, 2, 0)  # the overrides were applied
    assert not (tmp_path / "not-used").exists()  # the runs go to a temporary folder, not the job's run.out_dir
    table = proc.stdout
    assert "distst bench train" in table and "img/s/proc" in table and "loader" in table
    for name in ("fp32", "bf16", "bf16/fp32"):
        assert name in table, table


def test_verdict_is_data_bound_below_the_margin() -> None:
    assert "train" in BENCHES
    assert verdict(DATA_BOUND_MARGIN * 0.99) == "data-bound"
    assert verdict(DATA_BOUND_MARGIN * 1.01) == "compute-bound"


@pytest.mark.parametrize(("argv", "message"), [
    (["--precision", "fp32,fp8"], "unknown precision fp8"),
    (["--precision", "bf16,bf16"], "named twice"),
    (["--job", "jobs/no-such-job.yaml"], "does not exist"),
    (["--steps", "0"], "at least 1"),
    (["--warmup", "0"], "at least 1"),
    (["model.widht=0.5"], "model.widht: unknown key"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the default job is relative to the repository
    code = main(["bench", "train", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("distst bench: error: ") and message in err, err
