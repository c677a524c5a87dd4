"""The hang detector: a daemon thread per worker that ends the job when a training step takes far too long.

A rank whose peer is hung (SIGSTOPped, a dead GPU, a deadlocked loader) sits in a collective that never
returns, and nothing in the training thread can run. The ``StepWatchdog`` thread, fed by the loop's step
boundaries, sees the step under way pass ``train.hang_factor`` x the median of the recent steps (and at least
``train.hang_min_s``) and ends the process with one line and exit code 75 (``EXIT_REQUEUE``), attempting no
collective: the peer would never answer. The run resumes from its last checkpoint when the job is requeued.
Evaluations and checkpoints are paused out (they may take long: a hang inside one is left to the collective
timeout); the first steps of a session are warm-up and only timed.

A collective that fails instead (``train.collective_timeout`` ran out, a peer's connection was lost) ends the
same way: ``collective_failures`` turns gloo's error into ``CollectiveFailed``, one line naming the rank and
the step, exit code 75.

Under ``distst ... --nproc N`` the line goes to the launcher through the status directory
(``distst.launcher``), which ends the other ranks and prints it once; otherwise (srun, one process) the rank
prints it.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import DiststError
from ..stop import EXIT_REQUEUE

if TYPE_CHECKING:
    from ..config import TrainConfig

F = TypeVar("F", bound=Callable[..., Any])

#: Steps of a session timed before any is judged: the first steps warm up (allocator, autotuning, loaders).
WARMUP_STEPS = 3
#: Recent steps the median is taken over.
WINDOW = 50


@dataclass
class Progress:
    """Where this process's training stands: the step under way and the last checkpoint, for the lines of a
    hang or a failed collective (the last ``train()`` call's; it outlives the watchdog)."""

    rank: int = 0
    step: int | None = None  # the step under way; None before the first
    checkpoint: int | None = None  # the step of the newest checkpoint, None when there is none yet
    workdir: Path | None = None
    collective_timeout: float | None = None  # train.collective_timeout, seconds

    def resume_from(self) -> str:
        if self.step is None:  # training has not started: which checkpoint it resumed from is not known yet
            return "the last checkpoint"
        return f"the last checkpoint (step {self.checkpoint})" if self.checkpoint else "the start (no checkpoint yet)"

    def where(self) -> str:
        return f"at step {self.step}" if self.step is not None else "before the first step"


PROGRESS = Progress()


class CollectiveFailed(DiststError):
    """A collective failed on this rank (timed out, or a peer's connection was lost): the job ends for a requeue."""

    exit_code = EXIT_REQUEUE

    def __init__(self, message: str, *, hung: bool) -> None:
        super().__init__(message)
        self.hung = hung  # a peer hangs (the launcher ends it) rather than being gone


class StepWatchdog:
    """Times the steps of one ``train()`` call and ends the job (``on_hang(line)``) when one is overdue.

    The loop calls ``finished(step)`` at each step boundary, runs evaluations and checkpoints inside
    ``paused()`` and reports ``checkpointed(step)``; a step's time runs from the previous boundary (or the end of
    a pause) to its own. ``check(now)`` is the judgement, the thread only calls it.
    """

    def __init__(self, factor: float, min_s: float, progress: Progress, *, on_hang: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, poll_s: float | None = None) -> None:
        self.factor, self.min_s, self.progress = factor, min_s, progress
        self.on_hang = on_hang or end_job
        self.clock = clock
        self.poll_s = poll_s if poll_s is not None else min(1.0, min_s / 10)
        self.times: deque[float] = deque(maxlen=WINDOW)
        self.mark: float | None = clock()  # start of the step under way; None while paused
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_run(cls, train: TrainConfig, rank: int, step: int, checkpoint: int | None, workdir: Path
                ) -> StepWatchdog:
        """The running watchdog of a ``train()`` call about to take step ``step + 1`` (``checkpoint``: the step
        it resumed from), closed at the latest when the enclosing ``watched()`` block ends."""
        PROGRESS.rank, PROGRESS.step, PROGRESS.checkpoint = rank, step + 1, checkpoint
        PROGRESS.workdir, PROGRESS.collective_timeout = workdir, train.collective_timeout
        dog = cls(train.hang_factor, train.hang_min_s, PROGRESS)
        dog.run()
        return dog

    def run(self) -> None:
        """Start the thread (none when ``factor`` is 0: the watchdog is off)."""
        _open().append(self)
        if self.factor > 0:
            self._thread = threading.Thread(target=self._watch, name="distst-step-watchdog", daemon=True)
            self._thread.start()

    def finished(self, step: int) -> None:
        """Step ``step`` ended: its time joins the median; the next one begins."""
        with self._lock:
            now = self.clock()
            if self.mark is not None:
                self.times.append(now - self.mark)
            self.mark = now
            self.progress.step = step + 1

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """An evaluation or a checkpoint: not a step, never judged."""
        with self._lock:
            self.mark = None
        try:
            yield
        finally:
            with self._lock:
                self.mark = self.clock()

    def pausing(self, work: F) -> F:
        """``work`` run inside ``paused()``."""

        @wraps(work)
        def paused_work(*args: Any, **kwargs: Any) -> Any:
            with self.paused():
                return work(*args, **kwargs)

        return paused_work  # type: ignore[return-value]

    def checkpointed(self, step: int) -> None:
        self.progress.checkpoint = step

    def threshold(self) -> float | None:
        """Seconds the step under way may take; None while warming up."""
        if len(self.times) < WARMUP_STEPS:
            return None
        return max(self.min_s, self.factor * statistics.median(self.times))

    def check(self, now: float | None = None) -> str | None:
        """The line ending the job when the step under way is overdue, else None."""
        with self._lock:
            limit = self.threshold()
            if self.factor <= 0 or self.mark is None or limit is None:
                return None
            waited = (self.clock() if now is None else now) - self.mark
            if waited <= limit:
                return None
            median = statistics.median(self.times)
        p = self.progress
        return (f"distst: rank {p.rank} made no progress {p.where()} for {waited:.0f} s (median step {median:.2g} s): "
                f"ending the job for a requeue from {p.resume_from()}")

    def close(self) -> None:
        self._closed.set()

    def _watch(self) -> None:
        while not self._closed.wait(self.poll_s):
            line = self.check()
            if line is not None and not self._closed.is_set():
                self.on_hang(line)
                return


_LOCAL = threading.local()


def _open() -> list[StepWatchdog]:
    """This thread's watchdogs started and not yet closed by ``watched`` (a Tune trial trains in a thread)."""
    if not hasattr(_LOCAL, "open"):
        _LOCAL.open = []
    return _LOCAL.open


@contextlib.contextmanager
def watched() -> Iterator[None]:
    """Close every watchdog started in the block when it ends, by an error too: a watchdog left running would
    end the process long after its ``train()`` call raised."""
    started = _open()
    before = len(started)
    try:
        yield
    finally:
        while len(started) > before:
            started.pop().close()


def end_job(line: str) -> None:
    """End this process at once for a requeue: ``line`` to the launcher (or stderr), the run directory's lock
    released, exit code 75. No collective and no cleanup: the training thread is stuck in one."""
    from .. import launcher

    with contextlib.suppress(Exception):
        if not launcher.report_hang(line):
            print(line, file=sys.stderr, flush=True)
        _release_lock(PROGRESS.workdir)
        sys.stdout.flush()
    os._exit(EXIT_REQUEUE)


def _release_lock(workdir: Path | None) -> None:
    """Give up the run directory's lock (held by rank 0 on the run's top directory): a requeued job on another
    host could not take over a lock left by this one."""
    if workdir is None:
        return
    from .. import rundir

    for folder in (workdir, *workdir.parents):
        if (folder / rundir.LOCK_FILE).is_file():
            rundir.release(folder)  # only if this process holds it


#: Parts of gloo's messages: a collective that waited out its timeout, and a peer whose connection is gone.
_TIMED_OUT = ("timed out", "timeout")
_PEER_GONE = ("connection reset by peer", "connection closed by peer", "broken pipe", "connection refused")


def collective_failure(err: BaseException) -> CollectiveFailed | None:
    """``err`` as a ``CollectiveFailed`` when it is a collective's timeout or a lost peer, else None."""
    names = {cls.__name__ for cls in type(err).__mro__}
    text = str(err)
    lowered = text.lower()
    if not isinstance(err, RuntimeError) or not (names & {"DistError", "DistBackendError", "DistNetworkError"}
                                                 or "gloo" in lowered or "nccl" in lowered):
        return None
    p = PROGRESS
    if any(part in lowered for part in _TIMED_OUT):
        waited = f" {p.collective_timeout:.0f} s (train.collective_timeout)" if p.collective_timeout else ""
        return CollectiveFailed(f"rank {p.rank} waited{waited} for another rank in a collective {p.where()}: "
                                f"ending the job for a requeue from {p.resume_from()}", hung=True)
    if any(part in lowered for part in _PEER_GONE):
        return CollectiveFailed(f"rank {p.rank} lost another rank in a collective {p.where()} ({_first_line(text)}): "
                                f"ending the job for a requeue from {p.resume_from()}", hung=False)
    return None


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line.split("] ", 1)[-1].split(". ")[0]  # gloo's message without its source location and advice


@contextlib.contextmanager
def collective_failures() -> Iterator[None]:
    """Turn a collective's timeout or a lost peer in the block into ``CollectiveFailed`` (one line, exit 75)."""
    try:
        yield
    except RuntimeError as err:
        failed = collective_failure(err)
        if failed is None:
            raise
        raise failed from err
