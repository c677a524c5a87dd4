"""``--nproc N``: a thin convenience that re-runs a distst command under torchrun (the standard launcher),
with stop signals and exit codes that behave as in one process.

Signals. torchrun runs in a session of its own, so a terminal's Ctrl-C or a kill of this process group
reaches only this launcher, which relays each signal once. SIGTERM/SIGUSR1 (checkpoint and stop) go to the
workers directly, as soon as each has installed its stop handler (a signal that arrives earlier waits):
torchrun's own handling of SIGTERM kills the workers after a fixed grace time and ignores SIGUSR1.
SIGINT/SIGHUP go to torchrun, which ends the workers as usual.

Exit codes. torchrun reports any non-zero worker exit as a failure (exit 1, with an error report). So each
worker records its real exit code in a status directory and reports a clean stop (75) to torchrun as 0; the
launcher exits with the code every worker agrees on: 75 after a checkpoint-and-stop.

Faults. torchrun's own output (its log lines, the ``ChildFailedError`` report) goes to ``torchrun.log`` in the run
directory; the workers keep the launcher's stdout and stderr. A worker that dies without recording an exit code
(SIGKILL, the OOM killer, a segfault) is named in one line, and the group is restarted in place from the last
checkpoint, at most ``--max-restarts`` times (default 3). The launcher runs that loop itself, one torchrun per
attempt with torchrun's own ``--max-restarts`` at 0: torchrun would restart after any failure, a bad config or a
divergence included, which only repeat; each attempt needs a fresh status directory and rendezvous port; and the
launcher words the line and picks the final code. Once the restarts are spent (or when the job was asked to stop)
it exits 75 for a requeue if this launch wrote a new checkpoint, else 1: a job that dies before any progress would
die again. A worker that finds the job hung (``distst.train.watchdog``: a step far slower than the median, or a
collective that timed out) records one line and exits; the launcher then kills the other ranks (a stopped one
too), prints that line and exits 75, attempting no restart.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from . import stop
from .stop import EXIT_REQUEUE

#: Where workers of one launch record readiness and exit codes (set by the launcher for torchrun's workers).
STATUS_DIR_ENV = "DISTST_LAUNCH_STATUS_DIR"
RELAYED_TO_TORCHRUN = (signal.SIGINT, signal.SIGHUP)
POLL_S = 0.1
#: The module torchrun runs in each worker: ``distst COMMAND ...`` with its exit code recorded for the launcher.
WORKER_MODULE = "distst.commands.launch"
#: torchrun's own output, appended per attempt, in the run directory.
LOG_NAME = "torchrun.log"
#: ``--max-restarts``' default: restarts in place after a rank's death, per launch.
DEFAULT_MAX_RESTARTS = 3


def relaunch_if_requested(args: argparse.Namespace, command: str, run_dir: Path | None = None) -> int | None:
    """Exit code of ``torchrun --nproc_per_node N`` running ``distst COMMAND ...``, or None to run here.

    ``run_dir``: the job's run directory (torchrun's log goes there; new checkpoints in it make a requeue worth
    it); ``args.max_restarts``: restarts in place after a rank's death (none without it)."""
    if args.nproc <= 1 or "RANK" in os.environ:
        return None
    worker = ["-m", WORKER_MODULE, command, args.job, *args.overrides]
    log = Path(run_dir) / LOG_NAME if run_dir is not None else \
        Path(tempfile.gettempdir()) / f"distst-{os.getpid()}-{LOG_NAME}"
    return Launch(worker, args.nproc, log, run_dir, max_restarts=getattr(args, "max_restarts", 0)).run()


@dataclass
class Ended:
    """How one torchrun attempt ended: ``code`` to exit with (after printing ``line``), or ``died``: the line
    naming a rank that died."""

    code: int
    died: str | None = None
    line: str | None = None


class Launch:
    """torchrun attempts: each started, relayed signals, waited for, its workers' exit codes read back; a rank's
    death restarts the group (at most ``max_restarts`` times)."""

    def __init__(self, worker_argv: Sequence[str], nproc: int, log: Path, run_dir: Path | None = None, *,
                 max_restarts: int = DEFAULT_MAX_RESTARTS) -> None:
        self.worker_argv, self.nproc, self.log, self.run_dir = list(worker_argv), nproc, log, run_dir
        self.max_restarts = max_restarts
        self.status = WorkerStatus(Path(tempfile.gettempdir()))  # each attempt's own, set by _attempt
        self.pending: deque[signal.Signals] = deque()  # appended by signal handlers: deque ops are atomic
        self.signalled = False  # a signal came: a rank's death is then no reason to restart

    def run(self) -> int:
        if stop.PROCESS.is_set():  # asked to stop while this process was starting: the workers take it over
            self.pending.append(signal.Signals.__members__.get(stop.PROCESS.reason or "", signal.SIGTERM))
            self.signalled = True
            stop.PROCESS.clear()
        previous = {sig: signal.signal(sig, self._record) for sig in (*stop.STOP_SIGNALS, *RELAYED_TO_TORCHRUN)}
        at_start = checkpoints(self.run_dir)
        try:
            for restarts in range(self.max_restarts + 1):
                with tempfile.TemporaryDirectory(prefix="distst-launch-") as folder:
                    ended = self._attempt(WorkerStatus(Path(folder)), restarts)
                if ended.died is None:
                    if ended.line:
                        _say(ended.line)
                    return ended.code
                if self.signalled or restarts == self.max_restarts:
                    break
                _say(f"{ended.died}; restarting the {self.nproc} workers from the last checkpoint (restart "
                     f"{restarts + 1} of at most {self.max_restarts}; torchrun's log: {self.log})")
        finally:
            stop.restore(previous)
        return self._give_up(ended.died, wrote=bool(checkpoints(self.run_dir) - at_start))

    def _give_up(self, died: str, wrote: bool) -> int:
        why = ("while the job was asked to stop" if self.signalled else
               f"and the {self.max_restarts} restart(s) in place are spent (--max-restarts)" if self.max_restarts else
               "(restarts in place are off: --max-restarts 0)")
        if wrote:
            end, code = "exit 75 for a requeue from the last checkpoint (this launch wrote new checkpoints)", EXIT_REQUEUE
        else:
            end, code = "exit 1: no new checkpoint since the launch began, a requeue would repeat the same work", 1
        _say(f"{died} {why}: {end}; torchrun's log: {self.log}")
        return code

    def _attempt(self, status: WorkerStatus, attempt: int) -> Ended:
        """One torchrun: started, its signals relayed, a hang's other ranks ended; how it ended."""
        from .train.engine import free_port

        self.status = status
        argv = [sys.executable, "-m", __name__, str(self.log), str(status.folder),
                f"--nproc_per_node={self.nproc}", f"--master_port={free_port()}", *self.worker_argv]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as log:
            log.write(f"--- distst launch {os.getpid()}, attempt {attempt + 1}, {time.strftime('%Y-%m-%dT%H:%M:%S')}: "
                      f"{' '.join(argv)}\n")
        env = {**os.environ, STATUS_DIR_ENV: str(status.folder)}
        child = subprocess.Popen(argv, env=env, start_new_session=True)
        ended_by_us: set[int] = set()
        while not self._ended(child):
            self._relay(child)
            if not ended_by_us and status.hangs():
                ended_by_us = status.kill_running(self.nproc)  # hung or stopped: they would never end by themselves
        code = _shell_code(child.returncode)
        if not status.started() and not status.torchrun_codes():  # no worker ran: torchrun itself failed
            return Ended(code or 1, line=f"distst: torchrun ended (exit code {code}) before its workers started; "
                                         f"its log: {self.log}")
        return status.outcome(self.nproc, code, ended_by_us)

    def _record(self, signum: int, _frame: object) -> None:
        self.signalled = True
        self.pending.append(signal.Signals(signum))  # acted on by the polling loop, not in the handler

    @staticmethod
    def _ended(child: subprocess.Popen) -> bool:
        try:
            child.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _relay(self, child: subprocess.Popen) -> None:
        for _ in range(len(self.pending)):
            sig = self.pending.popleft()
            if sig in RELAYED_TO_TORCHRUN:
                child.send_signal(sig)
            elif self.status.all_ready(self.nproc):
                print(f"distst: {sig.name} received; asking the {self.nproc} workers to checkpoint and stop",
                      file=sys.stderr, flush=True)
                self.status.signal_running(sig)
            else:
                self.pending.append(sig)  # a worker is still starting: it would die of the signal


class WorkerStatus:
    """A status directory: ``rank<r>.pid`` once a worker handles stop signals, ``rank<r>.exit`` when it ends."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def ready(self, rank: int) -> None:
        _write(self.folder / f"rank{rank}.pid", str(os.getpid()))

    def exited(self, rank: int, code: int) -> None:
        _write(self.folder / f"rank{rank}.exit", str(code))

    def started(self) -> bool:
        """Whether any worker got as far as handling stop signals."""
        return any(self.folder.glob("rank*.pid"))

    def all_ready(self, nproc: int) -> bool:
        return all((self.folder / f"rank{r}.pid").is_file() for r in range(nproc))

    def signal_running(self, sig: signal.Signals) -> None:
        for pid_file in sorted(self.folder.glob("rank*.pid")):
            if not pid_file.with_suffix(".exit").exists():
                try:
                    os.kill(int(pid_file.read_text()), sig)
                except ProcessLookupError:
                    pass  # ended between the check and the signal

    def exit_code(self, rank: int) -> int | None:
        path = self.folder / f"rank{rank}.exit"
        return int(path.read_text()) if path.is_file() else None

    def hung(self, rank: int, line: str) -> None:
        """This rank ends the job: a peer hangs (``line`` says where). The exit code is recorded first."""
        self.exited(rank, EXIT_REQUEUE)
        _write(self.folder / f"rank{rank}.hang", line)

    def hangs(self) -> list[str]:
        """The lines of the ranks that found the job hung, first found first."""
        found = sorted(self.folder.glob("rank*.hang"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [p.read_text() for p in found]

    def kill_running(self, nproc: int) -> set[int]:
        """SIGKILL every worker (its process group: loader workers too) that has not recorded its exit: the ranks
        ended. SIGKILL ends a SIGSTOPped process too; SIGTERM would wait for a SIGCONT."""
        ended = set()
        for rank in range(nproc):
            pid_file = self.folder / f"rank{rank}.pid"
            if self.exit_code(rank) is not None or not pid_file.is_file():
                continue
            pid = int(pid_file.read_text())
            try:
                os.killpg(pid, signal.SIGKILL)  # torchrun starts each worker in a session of its own
            except (ProcessLookupError, PermissionError):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue  # ended meanwhile
            ended.add(rank)
        return ended

    def torchrun_saw(self, codes: dict[int, int]) -> None:
        """torchrun's exit code of each failed worker (negative: killed by that signal), by rank."""
        _write(self.folder / "torchrun.json", json.dumps({str(k): v for k, v in codes.items()}))

    def torchrun_codes(self) -> dict[int, int]:
        path = self.folder / "torchrun.json"
        return {int(k): int(v) for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}

    def outcome(self, nproc: int, launcher_code: int, ended_by_us: AbstractSet[int] = frozenset()) -> Ended:
        """How an attempt ended: a hang's line and 75; a worker's own failing code; a rank that died without
        recording one (not one the launcher ended), for a restart; else the code the workers agree on."""
        hangs = self.hangs()
        if hangs:
            return Ended(EXIT_REQUEUE, line=hangs[0])
        codes = {r: self.exit_code(r) for r in range(nproc)}
        if any(c not in (None, 0, EXIT_REQUEUE) for c in codes.values()):
            return Ended(self.common_exit_code(nproc, launcher_code))  # the worker's own error said why
        dead = [r for r, c in codes.items() if c is None and r not in ended_by_us]
        if dead:
            seen = self.torchrun_codes()
            # A rank torchrun ended itself (SIGTERM, once the first one died) is no root cause.
            dead.sort(key=lambda r: (seen.get(r) == -signal.SIGTERM, r))
            code = seen.get(dead[0])
            if code is not None and code > 0:  # it exited by itself, before recording: no death, a failure
                return Ended(code, line=f"distst: rank {dead[0]} exited with code {code} before it could record it "
                                        "(its own output above says why)")
            return Ended(1, died=f"distst: rank {dead[0]} died ({_death(code)})")
        return Ended(self.common_exit_code(nproc, launcher_code))

    def common_exit_code(self, nproc: int, launcher_code: int) -> int:
        """The workers' code when all agree; else the first failing worker's, else torchrun's (never 75)."""
        codes = [self.exit_code(r) for r in range(nproc)]
        if None not in codes and len(set(codes)) == 1:
            return int(codes[0])
        failed = [c for c in codes if c not in (None, 0, EXIT_REQUEUE)]
        if failed:
            return failed[0]
        return launcher_code if launcher_code not in (0, EXIT_REQUEUE) else 1


def _death(code: int | None) -> str:
    """How a worker that recorded no exit code ended, from torchrun's exit code (negative: the signal)."""
    if code is None:
        return "torchrun gave no exit code"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def report_hang(line: str) -> bool:
    """Under the launcher: record that this worker ends the job (a peer hangs), for the launcher to say and act
    on; False elsewhere (the caller prints ``line``)."""
    if not under_launcher():
        return False
    WorkerStatus(Path(os.environ[STATUS_DIR_ENV])).hung(int(os.environ["RANK"]), line)
    return True


def under_launcher() -> bool:
    """Whether this process is a worker of ``--nproc N`` (the launcher reports its faults)."""
    return bool(os.environ.get(STATUS_DIR_ENV)) and "RANK" in os.environ


def checkpoints(run_dir: Path | None) -> set[tuple[int, str]]:
    """Every finished checkpoint under ``run_dir``, as (inode, path) (a save renames a new directory into place):
    ``checkpoints/step_N`` up to two levels down (IMP levels, channel-pruning stages), as slurm/distst_job.sh."""
    if run_dir is None:
        return set()
    found = set()
    for pattern in ("checkpoints/step_*", "*/checkpoints/step_*", "*/*/checkpoints/step_*"):
        for path in Path(run_dir).glob(pattern):
            if not path.name.endswith(".tmp"):
                try:
                    found.add((path.stat().st_ino, str(path)))
                except OSError:
                    pass  # removed meanwhile (an old checkpoint rotated out)
    return found


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _write(path: Path, text: str) -> None:
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(text)
    os.replace(staged, path)  # the launcher polls: it must never read a half-written number


def _shell_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N -> 128 + N, as a shell says


def torchrun_agent(argv: Sequence[str]) -> int:
    """``python -m distst.launcher LOG STATUS_DIR TORCHRUN_ARGS...``: torchrun with its own output appended to
    LOG and the exit codes of failed workers recorded in STATUS_DIR. Only Python's ``sys.stderr`` is replaced,
    before torch is imported (its log handlers take it): the workers inherit the real stderr."""
    log_path, status_dir, *torchrun_args = argv
    sys.stderr = open(log_path, "a", buffering=1)  # noqa: SIM115 - the process's stderr until it ends
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    try:
        main(torchrun_args)
    except ChildFailedError as err:
        WorkerStatus(Path(status_dir)).torchrun_saw({rank: f.exitcode for rank, f in err.failures.items()})
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(torchrun_agent(sys.argv[1:]))
