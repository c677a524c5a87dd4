#!/usr/bin/env python3
"""A throwaway one-node Slurm cluster on this machine, for tests and for trying batch scripts by hand.

Stdlib only, so it runs before the project's venv exists. Needs root (slurmd launches jobs as root and
munged must run as the `munge` user); installs Debian's `slurm-wlm` and `munge` with apt-get when missing.

    python slurm/dev/cluster.py up [--dir D]      # start; prints `export SLURM_CONF=...` for eval
    python slurm/dev/cluster.py status [--dir D]
    python slurm/dev/cluster.py down [--dir D]    # stop the daemons it started, remove D

From Python:

    with SlurmCluster() as cluster:
        job = cluster.sbatch("#!/bin/bash\\necho hi\\n")
        assert job.state == "COMPLETED" and job.output() == "hi\\n"

Everything (slurm.conf, state, spool, logs, pid files, job outputs, a private munged socket) lives in one
directory; daemons listen on free ports, so two clusters can run side by side. See slurm/dev/README.md.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import pwd
import re
import shutil
import signal as signal_module
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SLURM_PACKAGES = ("slurm-wlm", "munge")
REQUIRED_BINARIES = ("slurmctld", "slurmd", "sbatch", "scontrol", "munged", "munge", "unmunge", "mungekey")
SBIN_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
STATE_FILE = "cluster.json"
# The only things stop() deletes, so `down --dir ~` can never wipe a directory we did not fill.
OWNED_SUBDIRS = ("etc", "state", "spool", "log", "run", "jobs", "munge")
DEFAULT_CLI_DIR = Path(tempfile.gettempdir()) / "distst-slurm"

# A job in one of these states will not change again (unless someone requeues it by hand).
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
)
# Pending reasons that a one-node cluster can never resolve by itself: waiting would hang a test.
HOPELESS_PENDING_REASONS = frozenset(
    {
        "PartitionConfig",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "BadConstraints",
        "JobHeldUser",
        "JobHeldAdmin",
        "DependencyNeverSatisfied",
    }
)
# Variables that would make our sbatch/srun talk about someone else's job (e.g. pytest run inside a job).
INHERITED_SLURM_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")


class ClusterUnavailable(RuntimeError):
    """Slurm cannot be set up on this machine at all (not root, no apt-get, install failed)."""

    def __init__(self, reason: str, *, not_root: bool = False, no_apt: bool = False) -> None:
        super().__init__(reason)
        self.not_root = not_root
        self.no_apt = no_apt


class ClusterError(RuntimeError):
    """The cluster misbehaved: a daemon did not start, a command failed, a wait timed out."""


class JobCannotRun(ClusterError):
    """The job is pending for a reason this cluster will never resolve (e.g. more CPUs than the node has)."""


# --------------------------------------------------------------------------------------------- install


def _find_binary(name: str) -> str | None:
    extra = os.pathsep.join(SBIN_DIRS)
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + extra)


def missing_binaries() -> list[str]:
    return [name for name in REQUIRED_BINARIES if _find_binary(name) is None]


def _apt_install() -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", *SLURM_PACKAGES]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def ensure_slurm_installed() -> None:
    """Install slurm-wlm and munge with apt-get unless their binaries are already there."""
    missing = missing_binaries()
    if not missing:
        return
    is_root = os.geteuid() == 0
    has_apt = shutil.which("apt-get") is not None
    if not (is_root and has_apt):
        why = "not running as root" if not is_root else "apt-get is not available"
        raise ClusterUnavailable(
            f"Slurm binaries missing ({', '.join(missing)}) and cannot install {' '.join(SLURM_PACKAGES)}: {why}",
            not_root=not is_root,
            no_apt=not has_apt,
        )
    result = _apt_install()
    if result.returncode != 0:  # stale or absent package lists: refresh once and retry
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, timeout=900)
        result = _apt_install()
    if result.returncode != 0 or missing_binaries():
        tail = (result.stdout + result.stderr)[-2000:]
        raise ClusterUnavailable(f"apt-get install {' '.join(SLURM_PACKAGES)} failed:\n{tail}")


# --------------------------------------------------------------------------------------------- host facts


def host_short_name() -> str:
    return socket.gethostname().split(".")[0]


def host_cpu_count() -> int:
    """CPUs this process may use (what `nproc` prints): the node must not advertise more than slurmd finds."""
    return len(os.sched_getaffinity(0))


def host_memory_mb() -> int:
    """MemTotal in MiB, the same figure slurmd computes, so the node is not drained for 'Low RealMemory'."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ClusterError("no MemTotal in /proc/meminfo")


def free_tcp_ports(count: int) -> list[int]:
    """Ports free right now; holding all sockets open until the end keeps them distinct."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# --------------------------------------------------------------------------------------------- processes


def _pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (daemons are reparented; nobody may reap them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _read_pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop_process(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL: a daemon that ignores TERM must not outlive teardown."""
    for sig, wait in ((signal_module.SIGTERM, timeout), (signal_module.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.05)


def pids_holding_files_under(directory: Path) -> list[int]:
    """Processes with an open file under `directory`: slurmstepd and job processes left behind by slurmd."""
    prefix = str(directory.resolve()) + os.sep
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            targets = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except OSError:
            continue
        if any(target.startswith(prefix) for target in targets):
            found.append(int(proc.name))
    return found


def _run(cmd: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 60.0, **kwargs):
    return subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


# --------------------------------------------------------------------------------------------- parsing

_SCONTROL_KEY = re.compile(r"(?:^|\s)([A-Za-z][\w:/]*)=")


def parse_scontrol_record(line: str) -> dict[str, str]:
    """Parse one `scontrol show ... -o` line. Values may hold spaces, so a value runs to the next ` Key=`."""
    matches = list(_SCONTROL_KEY.finditer(line))
    record = {}
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(line)
        record[match.group(1)] = line[match.end() : end].strip()
    return record


# --------------------------------------------------------------------------------------------- jobs


@dataclass
class Job:
    """A submitted batch job; every property asks slurmctld afresh (`scontrol show job`)."""

    job_id: int
    cluster: SlurmCluster = field(repr=False)

    def info(self) -> dict[str, str]:
        return self.cluster.job_info(self.job_id)

    @property
    def state(self) -> str:
        return self.info()["JobState"]

    @property
    def exit_code(self) -> str:
        """'<exit status>:<signal>' of the batch script, e.g. '0:0'."""
        return self.info()["ExitCode"]

    @property
    def restarts(self) -> int:
        return int(self.info().get("Restarts", "0"))

    def output(self) -> str:
        return self.cluster.output(self.job_id)

    def wait(self, states: Iterable[str] = FINAL_STATES, timeout: float = 300.0) -> dict[str, str]:
        return self.cluster.wait_for_state(self.job_id, states, timeout)

    def signal(self, sig: str | int, batch: bool = True, full: bool = False) -> None:
        self.cluster.signal(self.job_id, sig, batch=batch, full=full)


# --------------------------------------------------------------------------------------------- cluster


@dataclass
class _Daemons:
    """What start() launched, saved to cluster.json so `down` from another process stops exactly these."""

    munged: int | None = None
    slurmctld: int | None = None
    slurmd: int | None = None
    munge_dir: str | None = None  # None: slurm uses the system munged's default socket

    def started(self) -> dict[str, int]:
        names = ("slurmd", "slurmctld", "munged")  # stop order: node, controller, then auth
        return {name: getattr(self, name) for name in names if getattr(self, name)}


class SlurmCluster:
    """One slurmctld + one slurmd (+ munged if none is running) on localhost, all state under `base_dir`.

    `base_dir` defaults to a fresh temp dir, removed by stop(). `stop_at_exit` registers stop() with
    atexit as a safety net when the caller forgets (the CLI's `up` turns it off to leave the cluster up).
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        partition: str = "debug",
        kill_wait: int = 5,
        cred_expire: int = 10,
        start_timeout: float = 60.0,
        stop_at_exit: bool = True,
    ) -> None:
        self._created_base_dir = base_dir is None
        # Named now, created by start(): a cluster that never starts leaves nothing behind.
        default_dir = Path(tempfile.gettempdir()) / f"distst-slurm-{uuid.uuid4().hex[:10]}"
        self.base_dir = Path(base_dir or default_dir).resolve()
        self.partition = partition
        self.kill_wait = kill_wait
        self.cred_expire = cred_expire
        self.start_timeout = start_timeout
        self.stop_at_exit = stop_at_exit
        self.node_name = host_short_name()
        self._daemons = _Daemons()
        self._running = False

    # ----------------------------------------------------------------------------------------- paths

    @property
    def conf_path(self) -> Path:
        return self.base_dir / "etc" / "slurm.conf"

    @property
    def log_dir(self) -> Path:
        return self.base_dir / "log"

    @property
    def jobs_dir(self) -> Path:
        """Where scripts passed as text and default job outputs (slurm-<id>.out) go."""
        return self.base_dir / "jobs"

    def _run_dir(self) -> Path:
        return self.base_dir / "run"

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm commands and jobs: ours, minus any outer job's SLURM_*, plus SLURM_CONF."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_SLURM_PREFIXES)}
        path = env.get("PATH", "").split(os.pathsep)
        env["PATH"] = os.pathsep.join([p for p in path if p] + [d for d in SBIN_DIRS if d not in path])
        env["SLURM_CONF"] = str(self.conf_path)
        return env

    # ----------------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> SlurmCluster:
        """Install if needed, write the config, start the daemons and wait until the node is idle."""
        if self._running:
            return self
        if os.geteuid() != 0:
            raise ClusterUnavailable(
                "the dev cluster must run as root (SlurmUser=root, munged as user munge)",
                not_root=True,
                no_apt=shutil.which("apt-get") is None,
            )
        self._refuse_live_cluster_in_base_dir()
        ensure_slurm_installed()
        self._running = True  # from here on stop() has something to clean up
        if self.stop_at_exit:
            atexit.register(self.stop)
        try:
            self._prepare_dirs()
            self._start_munge()
            self.write_config()
            self._start_slurmctld()
            self._start_slurmd()
            self._wait_for_idle_node()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, remove: bool = True) -> None:
        """Cancel jobs, stop exactly the daemons start() launched (by PID), then remove the state.

        `remove=False` keeps the directory (logs, job outputs) for a post-mortem.
        """
        if not self._running:
            return
        if self._daemons.slurmctld and _pid_alive(self._daemons.slurmctld):
            self._cancel_all_jobs()
        for name, pid in self._daemons.started().items():
            if self._is_our_daemon(name, pid):
                stop_process(pid)
        for pid in pids_holding_files_under(self.base_dir):  # orphaned slurmstepd / job processes
            stop_process(pid, timeout=2.0)
        if remove:
            self._remove_state()
        self._running = False
        self._daemons = _Daemons()
        if self.stop_at_exit:
            atexit.unregister(self.stop)

    def _remove_state(self) -> None:
        for sub in OWNED_SUBDIRS:
            shutil.rmtree(self.base_dir / sub, ignore_errors=True)
        (self.base_dir / STATE_FILE).unlink(missing_ok=True)
        if self._daemons.munge_dir:  # may lie outside base_dir, see _make_munge_dir
            shutil.rmtree(self._daemons.munge_dir, ignore_errors=True)
        try:
            self.base_dir.rmdir()
        except OSError:
            pass  # not empty: the caller keeps files of their own there

    @classmethod
    def attach(cls, base_dir: str | os.PathLike[str]) -> SlurmCluster:
        """A handle on a cluster that `up` left running in `base_dir` (for `status` and `down`)."""
        cluster = cls(base_dir, stop_at_exit=False)
        state_file = cluster.base_dir / STATE_FILE
        if not state_file.exists():
            raise ClusterError(f"no dev cluster in {cluster.base_dir} (missing {STATE_FILE})")
        cluster._daemons = _Daemons(**json.loads(state_file.read_text()))
        cluster._running = True
        return cluster

    def daemon_status(self) -> dict[str, bool]:
        return {name: self._is_our_daemon(name, pid) for name, pid in self._daemons.started().items()}

    @property
    def started_pids(self) -> dict[str, int]:
        """PIDs of the daemons this cluster launched (munged absent when a running one was reused)."""
        return self._daemons.started()

    def _is_our_daemon(self, name: str, pid: int) -> bool:
        """Alive and still the program we started (its command line names our dir): never signal a recycled PID."""
        our_dir = self._daemons.munge_dir if name == "munged" else str(self.base_dir)
        cmdline = _cmdline(pid)
        return _pid_alive(pid) and name in cmdline and str(our_dir) in cmdline

    def _refuse_live_cluster_in_base_dir(self) -> None:
        """Starting over a running cluster's dir would wipe its state from under its daemons."""
        if (self.base_dir / STATE_FILE).exists() and any(
            SlurmCluster.attach(self.base_dir).daemon_status().values()
        ):
            raise ClusterError(f"a dev cluster is already running in {self.base_dir}; stop it first (`down`)")

    def _save_state(self) -> None:
        (self.base_dir / STATE_FILE).write_text(json.dumps(self._daemons.__dict__, indent=2))

    def _prepare_dirs(self) -> None:
        # A reused --dir may hold a previous cluster's state; slurmctld must start clean.
        for sub in OWNED_SUBDIRS:
            shutil.rmtree(self.base_dir / sub, ignore_errors=True)
            (self.base_dir / sub).mkdir(parents=True)
        if self._created_base_dir:  # a private munged (user munge) may live inside: others need +x
            self.base_dir.chmod(0o755)
        self._save_state()

    # ----------------------------------------------------------------------------------------- munge

    def _munge_works(self, socket_path: str | None = None) -> bool:
        socket_args = ["--socket", socket_path] if socket_path else []
        try:
            cred = _run([_find_binary("munge") or "munge", "-n", *socket_args], timeout=10)
            if cred.returncode != 0:
                return False
            check = _run([_find_binary("unmunge") or "unmunge", *socket_args], timeout=10, input=cred.stdout)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return check.returncode == 0

    def _start_munge(self) -> None:
        """Reuse a working system munged; otherwise run a private one (own key and socket) we can stop."""
        if self._munge_works():
            return
        munge_user = pwd.getpwnam("munge")
        munge_dir = self._make_munge_dir(munge_user.pw_uid, munge_user.pw_gid)
        self._daemons.munge_dir = str(munge_dir)
        self._save_state()
        paths = {name: str(munge_dir / name) for name in ("munge.key", "munged.pid", "munge.socket")}
        as_munge = {"user": munge_user.pw_uid, "group": munge_user.pw_gid, "extra_groups": []}
        _run(
            [_find_binary("mungekey") or "mungekey", "--create", "--keyfile", paths["munge.key"]], **as_munge
        )
        result = _run(
            [
                _find_binary("munged") or "munged",
                f"--socket={paths['munge.socket']}",
                f"--key-file={paths['munge.key']}",
                f"--pid-file={paths['munged.pid']}",
                f"--log-file={munge_dir / 'munged.log'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
            ],
            **as_munge,
        )
        if result.returncode == 0:  # the foreground munged exits once the daemon is up
            self._daemons.munged = self._wait_for(lambda: _read_pid_file(Path(paths["munged.pid"])), 10.0)
        self._save_state()
        if result.returncode != 0 or not self._munge_works(paths["munge.socket"]):
            raise ClusterError(
                f"munged did not start:\n{result.stderr}\n{self._log_tail(munge_dir / 'munged.log')}"
            )

    def _make_munge_dir(self, uid: int, gid: int) -> Path:
        """A dir for munged's socket, key, pid and log, owned by munge and reachable by every client.

        munged refuses a socket whose ancestors others cannot search, so when base_dir sits under a
        private dir (pytest's tmp_path is under a 0700 dir) the munge dir goes to /run instead.
        """
        if all(path.stat().st_mode & 0o001 for path in (self.base_dir, *self.base_dir.parents)):
            munge_dir = self.base_dir / "munge"
            shutil.rmtree(munge_dir, ignore_errors=True)
            munge_dir.mkdir()
        else:
            parent = "/run" if os.access("/run", os.W_OK) else "/tmp"
            munge_dir = Path(tempfile.mkdtemp(prefix="distst-munge-", dir=parent))
        munge_dir.chmod(0o755)
        os.chown(munge_dir, uid, gid)
        return munge_dir

    @property
    def munge_socket(self) -> str | None:
        """Our private munged's socket, or None when Slurm uses the system munged's default socket."""
        return f"{self._daemons.munge_dir}/munge.socket" if self._daemons.munge_dir else None

    # ----------------------------------------------------------------------------------------- config

    def config_text(self) -> str:
        """slurm.conf for a one-node cluster on this host; the comments say why each non-default is there."""
        ctld_port, slurmd_port = free_tcp_ports(2)
        base = self.base_dir
        auth_info = [f"socket={self.munge_socket}"] if self.munge_socket else []
        # cred_expire (min 5) also delays a requeued job's restart by cred_expire+1 s (default 120 s).
        auth_info.append(f"cred_expire={self.cred_expire}")
        lines = [
            "# Written by slurm/dev/cluster.py: one-node dev/test cluster. See slurm/dev/README.md.",
            # A name of its own: distst_job.sh offsets its rendezvous port by it, so two side-by-side clusters'
            # job 10s do not race for one port (both see it free, one loses: EADDRINUSE).
            f"ClusterName=distst-dev-{uuid.uuid4().hex[:8]}",
            f"SlurmctldHost={self.node_name}(127.0.0.1)",
            # Free ports instead of 6817/6818: side-by-side clusters (two test runs) do not collide.
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo={','.join(auth_info)}",
            f"StateSaveLocation={base / 'state'}",
            f"SlurmdSpoolDir={base / 'spool'}",
            f"SlurmctldPidFile={base / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={base / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={base / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={base / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # No cgroups in a container without systemd: plain /proc process tracking, no task binding.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            # Main scheduling loop every second (default 60): a requeued job starts again promptly.
            "SchedulerParameters=sched_interval=1",
            # Reject at submit what can never run (too many CPUs/nodes) instead of pending forever.
            "EnforcePartLimits=ALL",
            "JobRequeue=1",
            # Short SIGTERM->SIGKILL grace at the time limit (default 30 s); OverTimeLimit 0 = hard limit.
            f"KillWait={self.kill_wait}",
            "OverTimeLimit=0",
            "MessageTimeout=10",
            # Keep finished jobs visible to `scontrol show job` for an hour (there is no slurmdbd/sacct).
            "MinJobAge=3600",
            "ReturnToService=2",
            "InactiveLimit=0",
            f"NodeName={self.node_name} NodeAddr=127.0.0.1 CPUs={host_cpu_count()} "
            f"RealMemory={host_memory_mb()} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.node_name} Default=YES MaxTime=INFINITE State=UP",
        ]
        return "\n".join(lines) + "\n"

    def write_config(self) -> Path:
        self.conf_path.parent.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.config_text())
        return self.conf_path

    # ----------------------------------------------------------------------------------------- daemons

    def _start_daemon(self, name: str, args: Sequence[str]) -> None:
        """Launch a self-daemonising Slurm daemon and record the PID from its pid file."""
        binary = _find_binary(name) or name
        result = _run([binary, "-f", str(self.conf_path), *args], env=self.env)
        # The foreground process exits non-zero when initialisation fails, before it forks.
        pid = (
            None if result.returncode else self._wait_for(lambda: _read_pid_file(self._pid_file(name)), 10.0)
        )
        setattr(self._daemons, name, pid)
        self._save_state()
        if pid is None:
            raise ClusterError(
                f"{name} did not start (rc={result.returncode}):\n{result.stderr}\n{self._logs()}"
            )

    def _pid_file(self, daemon: str) -> Path:
        return self._run_dir() / f"{daemon}.pid"

    def _start_slurmctld(self) -> None:
        self._start_daemon("slurmctld", ["-c"])  # -c: ignore any saved state
        up = self._wait_for(lambda: self._scontrol_ok(["ping"]), self.start_timeout)
        if not up:
            raise ClusterError(f"slurmctld does not answer `scontrol ping`:\n{self._logs()}")

    def _start_slurmd(self) -> None:
        self._start_daemon("slurmd", ["-N", self.node_name])

    def _scontrol_ok(self, args: Sequence[str]) -> bool:
        try:
            return _run(["scontrol", *args], env=self.env, timeout=15).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def node_info(self) -> dict[str, str]:
        out = self.command(["scontrol", "show", "node", self.node_name, "-o"])
        return parse_scontrol_record(out.strip())

    def _wait_for_idle_node(self) -> None:
        def idle() -> bool:
            state = self.node_info().get("State", "")
            if "DRAIN" in state or "INVALID" in state:
                raise ClusterError(
                    f"node {self.node_name} is {state}: {self.node_info().get('Reason')}\n{self._logs()}"
                )
            return state.startswith("IDLE")

        if not self._wait_for(idle, self.start_timeout):
            raise ClusterError(f"node {self.node_name} not idle after {self.start_timeout}s:\n{self._logs()}")

    @staticmethod
    def _wait_for(predicate, timeout: float, interval: float = 0.1):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value or time.monotonic() >= deadline:
                return value
            time.sleep(interval)

    def _cancel_all_jobs(self) -> None:
        """Cancel this cluster's jobs so slurmd's job steps end before the daemons go away."""
        try:
            job_ids = self.command(["squeue", "-h", "-o", "%i"], timeout=15).split()
            if job_ids:
                _run(["scancel", *job_ids], env=self.env, timeout=15)
                self._wait_for(
                    lambda: not self.command(["squeue", "-h", "-t", "R,CG", "-o", "%i"]).split(), 15
                )
        except (ClusterError, subprocess.TimeoutExpired):
            pass  # the daemons are stopped regardless; leftover steps are killed afterwards

    # ----------------------------------------------------------------------------------------- diagnostics

    @staticmethod
    def _log_tail(path: Path, lines: int = 40) -> str:
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"--- {path}: (missing)"
        return f"--- {path}:\n" + "\n".join(text)

    def _logs(self) -> str:
        return "\n".join(self._log_tail(self.log_dir / f"{name}.log") for name in ("slurmctld", "slurmd"))

    # ----------------------------------------------------------------------------------------- commands

    def command(self, cmd: Sequence[str], timeout: float = 60.0, **kwargs) -> str:
        """Run a Slurm client command against this cluster; return stdout, raise ClusterError on failure."""
        result = _run(cmd, env=self.env, timeout=timeout, **kwargs)
        if result.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} failed (rc={result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def sbatch(
        self,
        script: str | os.PathLike[str],
        *args: str,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
        timeout: float = 300.0,
        cwd: str | os.PathLike[str] | None = None,
    ) -> Job:
        """Submit a batch script (a path, or the script's text if it starts with '#!').

        `args` go to sbatch before the script (options such as '--time=1'); `env` entries are added to
        `self.env`, and the job sees them (sbatch exports the submitter's environment). Unless the
        script or args set --output, output goes to `jobs_dir/slurm-<id>.out`. With `wait`, return once
        the job reached a final state (raises ClusterError on timeout, JobCannotRun if it never can).
        """
        script_path = self._script_file(script)
        output_args = [] if _sets_output(script_path, args) else [f"--output={self.jobs_dir}/slurm-%j.out"]
        job_env = {**self.env, **(env or {})}
        cmd = ["sbatch", "--parsable", *output_args, *args, str(script_path)]
        out = self._submit(cmd, job_env, cwd)
        job = Job(int(out.strip().split(";")[0]), self)
        if wait:
            job.wait(timeout=timeout)
        return job

    def _submit(self, cmd: Sequence[str], env: Mapping[str, str], cwd: str | os.PathLike[str] | None) -> str:
        result = _run(cmd, env=env, cwd=cwd)
        if result.returncode != 0:
            raise ClusterError(f"sbatch rejected the job (rc={result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def _script_file(self, script: str | os.PathLike[str]) -> Path:
        if isinstance(script, str) and script.startswith("#!"):
            self.jobs_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="job-", suffix=".sh", dir=self.jobs_dir)
            with os.fdopen(fd, "w") as handle:
                handle.write(script)
            return Path(name)
        path = Path(script)
        if not path.is_file():
            raise FileNotFoundError(f"batch script not found: {path}")
        return path.resolve()

    def job_info(self, job_id: int | str) -> dict[str, str]:
        """`scontrol show job -o` as a dict (JobState, ExitCode, Restarts, Reason, StdOut, ...)."""
        out = self.command(["scontrol", "show", "job", "-o", str(job_id)], timeout=30)
        return parse_scontrol_record(out.strip().splitlines()[0])

    def wait_for_state(
        self, job_id: int | str, states: Iterable[str] = FINAL_STATES, timeout: float = 300.0
    ) -> dict[str, str]:
        """Poll until JobState is one of `states`; return the job's info.

        Raises JobCannotRun at once when the job pends for a reason that will never clear, and
        ClusterError (with the job's info and output tail) on timeout.
        """
        wanted = frozenset(states)
        deadline = time.monotonic() + timeout
        while True:
            info = self.job_info(job_id)
            if info["JobState"] in wanted:
                return info
            self._check_can_run(job_id, info, wanted)
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"job {job_id} not in {sorted(wanted)} after {timeout}s: JobState={info['JobState']} "
                    f"Reason={info.get('Reason')}\n--- output:\n{self._output_tail(job_id)}"
                )
            time.sleep(0.2)

    @staticmethod
    def _check_can_run(job_id: int | str, info: Mapping[str, str], wanted: frozenset[str]) -> None:
        pending_forever = info["JobState"] == "PENDING" and info.get("Reason") in HOPELESS_PENDING_REASONS
        if pending_forever and "PENDING" not in wanted:
            raise JobCannotRun(f"job {job_id} can never run here: Reason={info.get('Reason')}")
        if info["JobState"] in FINAL_STATES and not (wanted & FINAL_STATES):
            raise ClusterError(f"job {job_id} ended ({info['JobState']}) before reaching {sorted(wanted)}")

    def signal(self, job_id: int | str, sig: str | int, batch: bool = True, full: bool = False) -> None:
        """`scancel --signal=SIG`: to the batch shell only (batch), or to it and every step (full)."""
        scope = ["--full"] if full else ["--batch"] if batch else []
        self.command(["scancel", f"--signal={sig}", *scope, str(job_id)])

    def cancel(self, job_id: int | str) -> None:
        self.command(["scancel", str(job_id)])

    def output_path(self, job_id: int | str) -> Path:
        return Path(self.job_info(job_id)["StdOut"])

    def output(self, job_id: int | str) -> str:
        """The job's stdout file (StdOut from scontrol, so a script's own #SBATCH --output is honoured)."""
        return self.output_path(job_id).read_text(errors="replace")

    def _output_tail(self, job_id: int | str, chars: int = 3000) -> str:
        try:
            return self.output(job_id)[-chars:]
        except (OSError, ClusterError, KeyError):
            return "(no output file)"


_OUTPUT_OPTION = re.compile(r"^(-o|--output)(=|\s|$)")


def _sets_output(script: Path, args: Sequence[str]) -> bool:
    """Whether the command line or an #SBATCH line chooses the output file."""
    if any(_OUTPUT_OPTION.match(arg) for arg in args):
        return True
    for line in script.read_text(errors="replace").splitlines():
        if line.startswith("#SBATCH") and _OUTPUT_OPTION.match(line[len("#SBATCH") :].strip()):
            return True
    return False


# --------------------------------------------------------------------------------------------- CLI


def _cmd_up(base_dir: Path) -> int:
    started = time.monotonic()
    cluster = SlurmCluster(base_dir, stop_at_exit=False).start()
    print(
        f"# dev cluster up in {time.monotonic() - started:.1f}s, node {cluster.node_name}; daemons:"
        f" {cluster.started_pids}",
        file=sys.stderr,
    )
    print(f"export SLURM_CONF={cluster.conf_path}")
    return 0


def _cmd_down(base_dir: Path) -> int:
    if not (base_dir / STATE_FILE).exists():
        print(f"no dev cluster in {base_dir}", file=sys.stderr)
        return 0
    SlurmCluster.attach(base_dir).stop()
    print(f"# dev cluster in {base_dir} stopped and removed", file=sys.stderr)
    return 0


def _cmd_status(base_dir: Path) -> int:
    if not (base_dir / STATE_FILE).exists():
        print(f"no dev cluster in {base_dir}")
        return 1
    cluster = SlurmCluster.attach(base_dir)
    print(f"SLURM_CONF={cluster.conf_path}")
    for name, alive in cluster.daemon_status().items():
        print(f"{name:10s} pid {cluster.started_pids[name]:>7d}  {'running' if alive else 'NOT running'}")
    for cmd in (["sinfo"], ["squeue"]):
        result = _run(cmd, env=cluster.env, timeout=15)
        print(result.stdout + result.stderr, end="")
    return 0 if all(cluster.daemon_status().values()) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="One-node Slurm cluster on localhost for development and tests."
    )
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_CLI_DIR, help=f"state directory (default {DEFAULT_CLI_DIR})"
    )
    options = parser.parse_args(argv)
    actions = {"up": _cmd_up, "down": _cmd_down, "status": _cmd_status}
    try:
        return actions[options.action](options.dir.resolve())
    except (ClusterUnavailable, ClusterError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
