"""``train.collective_timeout``: a rank that never comes (hung, SIGSTOPped) fails the others within the configured
time, with a message, instead of torch's default half hour of silence."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import patience, subprocess_env, tiny_config

from distst.config import DEFAULT_COLLECTIVE_TIMEOUT_S, ConfigError
from distst.train.engine import free_port

#: Rank 1 joins the group, then blocks on its stdin (never on a clock) and never reaches the barrier.
SCRIPT = """
import os, sys, time
import torch
from distst.train.engine import setup_distributed, set_collective_timeout

timeout = float(sys.argv[1]) if sys.argv[1] != "default" else None
info = setup_distributed(timeout)
backend = torch.distributed.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
print("timeout", backend.options._timeout.total_seconds(), flush=True)
if info.world_size == 1:
    set_collective_timeout(7)
    print("timeout", backend.options._timeout.total_seconds(), flush=True)
    sys.exit(0)
if info.rank == 1:
    sys.stdin.read()
    sys.exit(0)
start = time.monotonic()
try:
    torch.distributed.barrier()
except Exception as err:
    print(f"failed after {time.monotonic() - start:.1f}s: {type(err).__name__}: {err}", flush=True)
    sys.exit(3)
sys.exit(0)
"""


def start(rank: int, world: int, port: int, timeout: str, script: Path) -> subprocess.Popen:
    env = subprocess_env()
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port))
    return subprocess.Popen([sys.executable, str(script), timeout], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "ranks.py"
    path.write_text(SCRIPT)
    return path


def test_the_group_gets_the_default_then_the_given_timeout(script: Path) -> None:
    proc = start(0, 1, free_port(), "default", script)
    out, _ = proc.communicate(timeout=patience(120))
    assert proc.returncode == 0, out
    assert [line for line in out.splitlines() if line.startswith("timeout")] == \
        [f"timeout {float(DEFAULT_COLLECTIVE_TIMEOUT_S)}", "timeout 7.0"]


def test_a_rank_that_never_comes_fails_the_other_within_the_timeout(script: Path) -> None:
    port = free_port()
    ranks = [start(rank, 2, port, "3", script) for rank in (0, 1)]
    try:
        began = time.monotonic()
        out, _ = ranks[0].communicate(timeout=patience(120))  # waits on rank 0's exit, not on a sleep
        elapsed = time.monotonic() - began
    finally:
        for proc in ranks:
            proc.kill()
            proc.communicate()
    assert ranks[0].returncode == 3, out
    assert "timeout 3.0" in out
    failed = next(line for line in out.splitlines() if line.startswith("failed after"))
    assert float(failed.split()[2].removesuffix("s:")) >= 2.5, failed  # it did wait for the configured time
    assert "timed out" in failed.lower() or "timeout" in failed.lower(), failed
    assert elapsed < 90, elapsed


def test_the_key(tmp_path: Path) -> None:
    assert tiny_config(tmp_path).train.collective_timeout == DEFAULT_COLLECTIVE_TIMEOUT_S == 600
    assert "collective_timeout" not in tiny_config(tmp_path).model_dump()["train"]  # run hashes stay as they were
    assert tiny_config(tmp_path, train__collective_timeout=30).model_dump()["train"]["collective_timeout"] == 30
    with pytest.raises(ConfigError, match="collective_timeout"):
        tiny_config(tmp_path, train__collective_timeout=0)
