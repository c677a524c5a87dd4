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
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from . import stop
from .stop import EXIT_REQUEUE

#: Where workers of one launch record readiness and exit codes (set by the launcher for torchrun's workers).
STATUS_DIR_ENV = "DISTST_LAUNCH_STATUS_DIR"
RELAYED_TO_TORCHRUN = (signal.SIGINT, signal.SIGHUP)
POLL_S = 0.1
#: The module torchrun runs in each worker: ``distst COMMAND ...`` with its exit code recorded for the launcher.
WORKER_MODULE = "distst.commands.launch"


def relaunch_if_requested(args: argparse.Namespace, command: str) -> int | None:
    """Exit code of ``torchrun --nproc_per_node N`` running ``distst COMMAND ...``, or None to run here."""
    if args.nproc <= 1 or "RANK" in os.environ:
        return None
    from .train.engine import free_port

    with tempfile.TemporaryDirectory(prefix="distst-launch-") as status_dir:
        argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}",
                f"--master_port={free_port()}", "-m", WORKER_MODULE, command, args.job, *args.overrides]
        return Launch(argv, args.nproc, Path(status_dir)).run()


class Launch:
    """One torchrun child: started, relayed signals, waited for, its workers' exit code read back."""

    def __init__(self, argv: Sequence[str], nproc: int, status_dir: Path) -> None:
        self.argv, self.nproc, self.status = list(argv), nproc, WorkerStatus(status_dir)
        self.pending: deque[signal.Signals] = deque()  # appended by signal handlers: deque ops are atomic

    def run(self) -> int:
        if stop.PROCESS.is_set():  # asked to stop while this process was starting: the workers take it over
            self.pending.append(signal.Signals.__members__.get(stop.PROCESS.reason or "", signal.SIGTERM))
            stop.PROCESS.clear()
        env = {**os.environ, STATUS_DIR_ENV: str(self.status.folder)}
        previous = {sig: signal.signal(sig, self._record) for sig in (*stop.STOP_SIGNALS, *RELAYED_TO_TORCHRUN)}
        try:
            child = subprocess.Popen(self.argv, env=env, start_new_session=True)
            while not self._ended(child):
                self._relay(child)
        finally:
            stop.restore(previous)
        return self.status.common_exit_code(self.nproc, _shell_code(child.returncode))

    def _record(self, signum: int, _frame: object) -> None:
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

    def common_exit_code(self, nproc: int, launcher_code: int) -> int:
        """The workers' code when all agree; else the first failing worker's, else torchrun's (never 75)."""
        codes = [self.exit_code(r) for r in range(nproc)]
        if None not in codes and len(set(codes)) == 1:
            return int(codes[0])
        failed = [c for c in codes if c not in (None, 0, EXIT_REQUEUE)]
        if failed:
            return failed[0]
        return launcher_code if launcher_code not in (0, EXIT_REQUEUE) else 1


def _write(path: Path, text: str) -> None:
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(text)
    os.replace(staged, path)  # the launcher polls: it must never read a half-written number


def _shell_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N -> 128 + N, as a shell says
