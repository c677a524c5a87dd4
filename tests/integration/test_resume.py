"""A killed run resumes where it stopped and ends bitwise equal; SIGTERM/SIGUSR1 checkpoint and exit 75."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, distst_command, patience, run_distst, subprocess_env, tiny_overrides, write_job

from distst.track import read_metrics
from distst.train import EXIT_REQUEUE

pytestmark = pytest.mark.slow


def deterministic_overrides(out: Path, **extra: object) -> list[str]:
    return tiny_overrides(out, train__steps=8, train__deterministic="true", data__workers=1, **extra)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = patience(180)) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


TEMPORAL_LOSSES = {"temporal__noise_weight": 10.0, "temporal__compound_weight": 1.0}


# qat: fake-quant observers live in the method state; the temporal losses draw their noise and motion from the
# training RNG, which the checkpoint holds.
@pytest.mark.parametrize(("method", "extra"), [("none", {}), ("qat", {}), ("none", TEMPORAL_LOSSES)],
                         ids=["none", "qat", "temporal_losses"])
def test_sigkill_mid_run_then_resume_is_bitwise_identical(tmp_path: Path, method: str, extra: dict) -> None:
    job = write_job(tmp_path / "job.yaml")
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    run_distst("train", str(job), *deterministic_overrides(clean, prune__method=method, **extra))

    proc = subprocess.Popen(distst_command("train", str(job), *deterministic_overrides(killed, prune__method=method,
                                                                                       **extra)),
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    wait_for(lambda: (killed / "checkpoints" / "step_00000004" / "state.pt").is_file(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=patience(30))
    assert not (killed / "summary.json").exists()

    run_distst("train", str(job), *deterministic_overrides(killed, prune__method=method, **extra))
    assert losses(killed) == losses(clean)  # the same batches, in the same order, after the resume
    logged = [r for r in read_metrics(killed / "metrics.jsonl") if "loss" in r]
    for key in ("temporal/noise", "temporal/compound") if extra else ():
        assert all(key in r for r in logged) and any(r[key] > 0 for r in logged), f"{key} is a term of every step"
    first = torch.load(clean / "model.pt", weights_only=True)["state_dict"]
    again = torch.load(killed / "model.pt", weights_only=True)["state_dict"]
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first), "resumed weights differ from the uninterrupted run"
    assert not list((killed / "checkpoints").glob("*.tmp"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signal_checkpoints_and_exits_with_requeue_code(tmp_path: Path, sig: signal.Signals) -> None:
    job = write_job(tmp_path / "job.yaml")
    out = tmp_path / "run"
    overrides = tiny_overrides(out, train__steps=500, train__checkpoint_every=100)
    proc = subprocess.Popen(distst_command("train", str(job), *overrides), cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(losses(out)) >= 3, proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=patience(120)) == EXIT_REQUEUE
    saved = sorted((out / "checkpoints").glob("step_*"))
    assert len(saved) == 1 and 3 <= int(saved[0].name.split("_")[1]) < 100  # at the next step boundary
    assert not (out / "summary.json").exists()
    stopped_at = int(saved[0].name.split("_")[1])
    run_distst("train", str(job), *tiny_overrides(out, train__steps=stopped_at + 2, train__checkpoint_every=100))
    assert [s for s, _ in losses(out)] == list(range(1, stopped_at + 3))
