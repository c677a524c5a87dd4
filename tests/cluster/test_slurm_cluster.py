"""The dev Slurm cluster does what the project's batch scripts rely on, checked through real daemons."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time

import pytest
import slurm_fixtures
from helpers import patience
from slurm_fixtures import CLUSTER_PY, ClusterError, JobCannotRun, cluster_module

pytest_plugins = ["slurm_fixtures"]  # provides the session-scoped `slurm_cluster` fixture
pytestmark = pytest.mark.xdist_group("slurm")  # one worker runs every test on the shared cluster


def _script(body: str) -> str:
    return "#!/bin/bash\n" + textwrap.dedent(body).lstrip()


def test_parse_scontrol_record_keeps_values_with_spaces_and_equals() -> None:
    line = "JobId=7 JobName=a b JobState=COMPLETED Reason=None ExitCode=0:0 TRES=cpu=1,node=1 Socks/Node=*"
    record = cluster_module.parse_scontrol_record(line)
    assert record["JobName"] == "a b"
    assert record["TRES"] == "cpu=1,node=1"
    assert record["Socks/Node"] == "*"
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0")


@pytest.mark.slurm
def test_trivial_job_completes_and_writes_its_output_file(slurm_cluster, tmp_path) -> None:
    script = _script(
        f"""
        #SBATCH --job-name=hello
        #SBATCH --output={tmp_path}/%x-%j.out
        echo "hello from job $SLURM_JOB_ID on $SLURMD_NODENAME, GREETING=$GREETING"
        """
    )
    job = slurm_cluster.sbatch(script, env={"GREETING": "hi"}, timeout=patience(60))
    assert (job.state, job.exit_code) == ("COMPLETED", "0:0"), job.output()
    assert slurm_cluster.output_path(job.job_id) == tmp_path / f"hello-{job.job_id}.out"
    assert job.output() == f"hello from job {job.job_id} on {slurm_cluster.node_name}, GREETING=hi\n"


@pytest.mark.slurm
def test_failing_job_reports_its_exit_code(slurm_cluster) -> None:
    job = slurm_cluster.sbatch(_script("echo failing; exit 3\n"), timeout=patience(60))
    assert (job.state, job.exit_code) == ("FAILED", "3:0")
    assert job.output() == "failing\n"


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.distributed
def test_srun_two_tasks_form_a_gloo_group(slurm_cluster, tmp_path) -> None:
    allreduce = tmp_path / "allreduce.py"
    allreduce.write_text(
        textwrap.dedent(
            """
            import os
            import torch
            import torch.distributed as dist

            rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
            dist.init_process_group("gloo", rank=rank, world_size=world)
            total = torch.tensor([float(rank + 1)])
            dist.all_reduce(total)
            print(f"rank={rank} world={world} sum={total.item()}", flush=True)
            dist.destroy_process_group()
            """
        )
    )
    master_port = cluster_module.free_tcp_ports(1)[0]
    script = _script(
        f"""
        #SBATCH --ntasks=2
        export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
        export MASTER_PORT={master_port}
        srun --ntasks=2 bash -c 'echo "procid=$SLURM_PROCID"'
        srun --ntasks=2 {sys.executable} {allreduce}
        """
    )
    job = slurm_cluster.sbatch(script, timeout=patience(120))
    output = job.output()
    assert (job.state, job.exit_code) == ("COMPLETED", "0:0"), output
    assert sorted(re.findall(r"^procid=(\d)$", output, re.M)) == ["0", "1"]
    assert sorted(re.findall(r"^rank=(\d) world=2 sum=3.0$", output, re.M)) == ["0", "1"]


# The pattern a preemptible training script uses: checkpoint on USR1, requeue itself, resume.
REQUEUE_ON_USR1 = """
    #SBATCH --open-mode=append
    echo "run restart_count=${SLURM_RESTART_COUNT:-0}"
    if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then echo "resumed and finished"; exit 0; fi
    on_usr1() { echo "got USR1"; scontrol requeue "$SLURM_JOB_ID"; exit 0; }
    trap on_usr1 USR1
    echo "trap ready"
    sleep 300 & wait  # bash runs a trap only between commands: wait returns at once on a signal
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_usr1_to_batch_script_requeues_it_and_the_rerun_finishes(slurm_cluster) -> None:
    job = slurm_cluster.sbatch(_script(REQUEUE_ON_USR1), wait=False)
    job.wait(["RUNNING"], timeout=patience(30))
    _wait_for_output(job, "trap ready", timeout=patience(30))  # a USR1 before the trap would kill bash
    started = time.monotonic()
    job.signal("USR1")
    job.wait(timeout=patience(60))
    output = job.output()
    assert (job.state, job.exit_code, job.restarts) == ("COMPLETED", "0:0", 1), output
    # slurmstepd may add its own "*** JOB n CANCELLED ... DUE TO JOB REQUEUE ***" line, depending on timing
    assert [line for line in output.splitlines() if not line.startswith("slurmstepd")] == [
        "run restart_count=0",
        "trap ready",
        "got USR1",
        "run restart_count=1",
        "resumed and finished",
    ]
    # cred_expire=10 holds a requeued job for 11 s; anything near the 120 s default means a config regression
    assert time.monotonic() - started < 40


@pytest.mark.slurm
def test_more_cpus_than_the_node_has_is_rejected_at_once(slurm_cluster) -> None:
    too_many = cluster_module.host_cpu_count() + 1
    started = time.monotonic()
    with pytest.raises(ClusterError, match="More processors requested than permitted"):
        slurm_cluster.sbatch(_script("true\n"), f"--cpus-per-task={too_many}", timeout=patience(10))
    assert time.monotonic() - started < 10


@pytest.mark.slurm
def test_waiting_for_a_job_that_can_never_start_fails_fast(slurm_cluster) -> None:
    job = slurm_cluster.sbatch(_script("true\n"), "--hold", wait=False)
    try:
        with pytest.raises(JobCannotRun, match="JobHeldUser"):
            job.wait(timeout=patience(30))
    finally:
        slurm_cluster.cancel(job.job_id)


@pytest.mark.slurm
@pytest.mark.slow
def test_signal_before_time_limit_reaches_the_batch_script(slurm_cluster) -> None:
    # slurmctld checks time limits every 30 s (compiled in), so with @50 on a 60 s limit the signal
    # comes at its first check after the start: 0-30 s in. See slurm/dev/README.md.
    script = _script(
        """
        #SBATCH --time=1
        #SBATCH --signal=B:USR1@50
        start=$SECONDS
        trap 'echo "USR1 after $((SECONDS - start)) s"; exit 0' USR1
        sleep 300 & wait
        """
    )
    job = slurm_cluster.sbatch(script, timeout=patience(75))
    output = job.output()
    assert (job.state, job.exit_code) == ("COMPLETED", "0:0"), output
    # slurmstepd may add "failed signal 18 ... No such process": it sends SIGCONT with the warning
    # signal and the script may already have exited.
    delivered = re.search(r"^USR1 after (\d+) s$", output, re.M)
    assert delivered and int(delivered.group(1)) <= 40, output


@pytest.mark.slurm
def test_cli_up_and_down_leave_no_daemons_behind(tmp_path) -> None:
    state_dir = tmp_path / "cluster"
    up = _cli("up", "--dir", str(state_dir))
    assert up.stdout.strip() == f"export SLURM_CONF={state_dir}/etc/slurm.conf", up.stderr
    pids = cluster_module.SlurmCluster.attach(state_dir).started_pids
    try:
        assert {"slurmctld", "slurmd"} <= set(pids)
        assert all(cluster_module._pid_alive(pid) for pid in pids.values())
        assert "idle" in _cli("status", "--dir", str(state_dir)).stdout
    finally:
        _cli("down", "--dir", str(state_dir))
    assert not [name for name, pid in pids.items() if cluster_module._pid_alive(pid)]
    assert not state_dir.exists()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, str(CLUSTER_PY), *args], capture_output=True, text=True, timeout=patience(120)
    )
    assert result.returncode == 0, result.stderr
    return result


def _wait_for_output(job, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if text in job.output():
                return
        except OSError:
            pass  # not created yet
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in job {job.job_id}'s output after {timeout}s")


def test_install_refreshes_package_lists_only_after_a_failed_install(monkeypatch) -> None:
    calls: list[str] = []

    def apt_install() -> subprocess.CompletedProcess[str]:  # fails until the package lists are fresh
        calls.append("install")
        installed = "apt-get update" in calls
        return subprocess.CompletedProcess([], 0 if installed else 100, "", "E: Unable to locate package")

    def missing_binaries() -> list[str]:
        return [] if calls.count("install") == 2 else ["slurmctld"]

    monkeypatch.setattr(cluster_module, "missing_binaries", missing_binaries)
    monkeypatch.setattr(cluster_module, "_apt_install", apt_install)
    monkeypatch.setattr(
        cluster_module.subprocess, "run", lambda cmd, **kwargs: calls.append(" ".join(cmd[:2]))
    )
    monkeypatch.setattr(cluster_module.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cluster_module.shutil, "which", lambda name: f"/usr/bin/{name}")
    cluster_module.ensure_slurm_installed()
    assert calls == ["install", "apt-get update", "install"]


def test_install_without_root_names_the_reason(monkeypatch) -> None:
    monkeypatch.setattr(cluster_module, "missing_binaries", lambda: ["slurmctld"])
    monkeypatch.setattr(cluster_module.os, "geteuid", lambda: 1000)
    with pytest.raises(cluster_module.ClusterUnavailable, match="not running as root") as raised:
        cluster_module.ensure_slurm_installed()
    assert raised.value.not_root


@pytest.mark.parametrize(
    ("ci", "not_root", "no_apt", "outcome"),
    [
        ("", True, True, pytest.skip.Exception),
        ("true", True, True, pytest.fail.Exception),
        ("", False, True, pytest.fail.Exception),
        ("", True, False, pytest.fail.Exception),
    ],
)
def test_fixture_skips_only_without_apt_and_root_and_never_in_ci(
    monkeypatch, ci, not_root, no_apt, outcome
) -> None:
    def start_unavailable(self):
        raise slurm_fixtures.ClusterUnavailable("cannot install slurm", not_root=not_root, no_apt=no_apt)

    monkeypatch.setattr(slurm_fixtures.SlurmCluster, "start", start_unavailable)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome):
        slurm_fixtures._start_or_skip()
