"""Stop the Ray processes a sweep driver started when the driver dies without stopping them (SIGKILL, OOM).

``ray.init()`` starts a private Ray instance under the driver. Killed outright, the driver never calls
``ray.shutdown()``: GCS and raylet die with it, but the dashboard and runtime-env agents (and any worker that
outlives its raylet) are re-parented to init and stay. The driver therefore starts this watcher, a process in
its own session: it keeps the list of the driver's descendants (pid and start time, so a reused pid is never
touched), waits for the driver to end (a pidfd, no polling of its state), and then ends whatever of that list
is still alive: SIGTERM, then SIGKILL after a grace time. It never looks beyond the driver's own tree, so other
Ray instances on the node (other users', other jobs') are safe; ``ray stop`` would end them all.
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
from pathlib import Path

import psutil

#: How often the list of descendants is refreshed while the driver lives (new workers appear over time).
REFRESH_S = 1.0
GRACE_S = 5.0


def start(driver_pid: int | None = None, log: Path | None = None) -> subprocess.Popen:
    """Start the watcher for ``driver_pid`` (default: this process); returns it (it ends by itself)."""
    driver = psutil.Process(driver_pid or os.getpid())
    out = open(log, "a") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen([sys.executable, "-m", __name__, str(driver.pid), repr(driver.create_time())],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                close_fds=True)
    finally:
        if out is not subprocess.DEVNULL:
            out.close()


def _descendants(driver: psutil.Process) -> dict[int, float]:
    found = {}
    try:
        for child in driver.children(recursive=True):
            if child.pid == os.getpid():
                continue  # this watcher is the driver's child too
            try:
                found[child.pid] = child.create_time()
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return found


def _still_ours(known: dict[int, float]) -> list[psutil.Process]:
    alive = []
    for pid, started in known.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.Error:
            continue
    return alive


def _name(process: psutil.Process) -> str:
    try:
        return f"{process.name()} {process.pid}"
    except psutil.Error:
        return str(process.pid)


def watch(driver_pid: int, driver_started: float) -> int:
    """Wait for the driver to end, then end its leftover descendants; returns how many were ended."""
    try:
        driver = psutil.Process(driver_pid)
        if driver.create_time() != driver_started:
            return 0  # the driver is gone already and its pid reused
        fd = os.pidfd_open(driver_pid)
    except (psutil.Error, ProcessLookupError):
        return 0
    known: dict[int, float] = {}
    try:
        while True:
            known.update(_descendants(driver))
            if select.select([fd], [], [], REFRESH_S)[0]:
                break  # the driver ended
    finally:
        os.close(fd)
    leftovers = _still_ours(known)
    names = [_name(process) for process in leftovers]
    for process in leftovers:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, survivors = psutil.wait_procs(leftovers, timeout=GRACE_S)  # outlived SIGTERM
    for process in survivors:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(survivors, timeout=GRACE_S)
    if leftovers:
        print(f"distst tune: the sweep driver (pid {driver_pid}) ended without stopping Ray; ended "
              f"{len(leftovers)} of its processes ({', '.join(names)})", flush=True)
    return len(leftovers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distst.sweep.reaper", description=__doc__.splitlines()[0])
    parser.add_argument("driver_pid", type=int)
    parser.add_argument("driver_started", type=float, help="the driver's start time (psutil's create_time)")
    args = parser.parse_args(argv)
    watch(args.driver_pid, args.driver_started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
