"""``metrics.jsonl`` across resumes: rows past the checkpoint's step are dropped, and a row the resumed step already
has (the final evaluation, repeated by a run resumed from its last checkpoint) is not written twice."""

from __future__ import annotations

from pathlib import Path

from distst.track import MetricsLog, read_metrics


def test_a_resume_keeps_the_rows_up_to_its_step_once(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in (1, 2, 3, 4):
        log.write({"step": step, "loss": float(step)})
        if step % 2 == 0:
            log.write({"step": step, "total_error": 10.0 - step})
    uninterrupted = read_metrics(path)

    for _ in range(2):  # resumed from the final checkpoint twice: each resume evaluates step 4 again
        again = MetricsLog(path, resume_step=4)
        again.write({"step": 4, "total_error": 6.0})
    assert read_metrics(path) == uninterrupted

    resumed = MetricsLog(path, resume_step=2)  # killed after step 4, resumed from the checkpoint of step 2
    resumed.write({"step": 2, "config_changed": {"train.steps": {"from": 4, "to": 5}}})  # an event: recorded
    for step in (3, 4):
        resumed.write({"step": step, "loss": float(step)})
        if step % 2 == 0:
            resumed.write({"step": step, "total_error": 10.0 - step})
    rows = read_metrics(path)
    assert [r for r in rows if "config_changed" not in r] == uninterrupted
    assert [r["step"] for r in rows if "config_changed" in r] == [2]
