"""``distst bench tune`` at its smallest (2 trials of 1 step per level): the plain sequential baseline runs with
the process set-up every trial has, and both Ray modes report their wall times (no timing thresholds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import patience, run_distst


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one Ray at a time (see test_tune.py)
def test_the_benchmark_runs_at_its_smallest_size_and_reports_every_mode(tmp_path: Path) -> None:
    out = tmp_path / "bench_tune.json"
    proc = run_distst("bench", "tune", "--trials", "2", "--steps", "1", "--crop", "32", "--json", str(out),
                      timeout=patience(600))
    report = json.loads(out.read_text())
    assert (report["trials"], report["steps"], report["crop"]) == (2, 1, 32)
    for key in ("plain_s", "ray_one_at_a_time_s", "ray_two_at_a_time_s"):
        assert math.isfinite(report[key]) and report[key] > 0, (key, report)
    assert report["two_over_one"] == pytest.approx(report["ray_one_at_a_time_s"] / report["ray_two_at_a_time_s"])
    assert "plain, sequential (no Ray)" in proc.stdout and "Ray Tune, 2 at a time" in proc.stdout


def test_fewer_than_two_trials_is_refused_in_one_line() -> None:
    proc = run_distst("bench", "tune", "--trials", "1", check=False)
    assert proc.returncode == 2 and "needs at least 2" in proc.stderr and "Traceback" not in proc.stderr
