"""Space runs out at a checkpoint: one line naming the file and the filesystem, exit 75 on every rank, the
partial checkpoint removed, the previous one intact; a re-run once space is back resumes from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from helpers import (
    REPO,
    distst_command,
    patience,
    run_distst,
    subprocess_env,
    tiny_config,
    tiny_overrides,
    write_job,
)

from distst.stop import EXIT_REQUEUE
from distst.train import checkpoint, train

if TYPE_CHECKING:
    from space_fixtures import Space

pytest_plugins = ["space_fixtures"]

MODEL_STATES = "main/mp_rank_00_model_states.pt"


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_exits_75_with_one_line_and_the_rerun_resumes(space: Space, tmp_path: Path) -> None:
    run = space.root / "run"
    job = write_job(tmp_path / "job.yaml")
    train(tiny_config(run, train__steps=2), run)  # finished at step 2: its checkpoint step_2, model.pt
    kept = checkpoint.complete_checkpoints(run / "checkpoints")
    assert [p.name for p in kept] == ["step_00000002"]
    states = (kept[0] / MODEL_STATES).stat().st_size
    freed = (run / "model.pt").stat().st_size + (run / "summary.json").stat().st_size  # extending removes them
    if space.mounted:
        space.resize(space.used() + (64 << 10))
        assert space.free() + freed < states, "the next checkpoint would fit: the test would not fill the disk"
    else:
        space.limit = states // 2  # above every other file the run writes (the largest: rng_rank0.pt, 38 kB)

    # Extended to 4 steps: steps 3 and 4 train, the checkpoint of step 4 runs out of space in DeepSpeed's write.
    proc = subprocess.run(distst_command("train", str(job), *tiny_overrides(run, train__steps=4)), cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=patience(300),
                          preexec_fn=space.preexec())
    assert proc.returncode == EXIT_REQUEUE, proc.stderr[-3000:]
    mark = "distst train: error: "  # a progress bar may share the line: from the error on
    errors = [line[line.index(mark):] for line in proc.stderr.splitlines() if mark in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    last = errors[0]
    failed = run / "checkpoints" / "step_00000004.tmp" / MODEL_STATES
    why = "no space left on device" if space.mounted else "file too large"
    assert last.startswith(f"distst train: error: {why} writing {failed} (filesystem "), last
    assert "bytes free of" in last
    assert last.endswith("checkpoint step_00000004 was not written (its partial files are removed), the last "
                         "checkpoint, step_00000002, is intact: free space, then re-run the same command: it "
                         "resumes from its last checkpoint"), last
    assert "Traceback" not in proc.stderr and "inline_container" not in proc.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002"]  # no step_4(.tmp)
    assert checkpoint.problem(run / "checkpoints" / "step_00000002") is None
    assert not (run / "model.pt").exists() and not (run / "summary.json").exists()  # those of step 2, retired

    if space.mounted:
        space.resize(64 << 20)
    proc = run_distst("train", str(job), *tiny_overrides(run, train__steps=4))  # no limit: room again
    assert f"resuming {run} from step_00000002" in proc.stdout + proc.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 4
    assert torch.load(run / "model.pt", weights_only=True)["step"] == 4
    assert [p.name for p in checkpoint.complete_checkpoints(run / "checkpoints")] == ["step_00000002",
                                                                                      "step_00000004"]


@pytest.mark.slow
@pytest.mark.distributed
def test_a_save_failing_on_one_rank_inside_deepspeed_stops_both_ranks_together(tmp_path: Path) -> None:
    # Rank 1 alone gets a file-size limit after step 2: at ZeRO-1 its own optimizer partition, written inside
    # DeepSpeed's save_checkpoint, fails at step 4 while rank 0 writes all of its files.
    from distst.train.engine import free_port

    out, reports = tmp_path / "run", tmp_path / "reports"
    reports.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
         str(REPO / "tests" / "workers" / "disk_full_worker.py"), str(out), str(reports)],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=patience(240))
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1)]
    failed = out / "checkpoints" / "step_00000004.tmp" / "main" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    for report in ranks:
        assert report["error"] == "DiskFull" and report["exit_code"] == EXIT_REQUEUE, report
        assert report["message"].startswith(f"file too large writing {failed} (filesystem "), report["message"]
        assert "the last checkpoint, step_00000002, is intact" in report["message"]
    assert ranks[0]["message"] == ranks[1]["message"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002"]
    assert checkpoint.problem(out / "checkpoints" / "step_00000002") is None
