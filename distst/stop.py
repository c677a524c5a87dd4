"""Stop requests: "checkpoint at the next step boundary and return", from a signal, a Tune trial or a thread.

The training loop only polls a ``StopRequest``; it never installs signal handlers, so it runs in any thread
(Ray Tune runs function trainables in a worker thread, where ``signal.signal`` raises). The CLI installs
handlers for SIGTERM/SIGUSR1 that set the process-wide request ``PROCESS`` first thing, before the slow
imports: Slurm's pre-time-limit signal can arrive while a task is still importing torch.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

#: Exit code after a stop-request checkpoint: "stopped cleanly, run me again" (EX_TEMPFAIL). The one
#: definition: the trainers, the torchrun launcher, ``distst tune`` and the smoke test import it; the Slurm
#: scripts (slurm/distst_job.sh) repeat the number.
EXIT_REQUEUE = 75


class StopRequest:
    """A one-way flag with a reason. Setting it is a plain attribute write: safe from signal handlers and threads."""

    def __init__(self) -> None:
        self._reason: str | None = None

    def set(self, reason: str = "stop requested") -> None:
        if self._reason is None:
            self._reason = reason

    def is_set(self) -> bool:
        return self._reason is not None

    @property
    def reason(self) -> str | None:
        return self._reason

    def clear(self) -> None:
        """Forget an acted-on request (a resumed run in the same process starts afresh)."""
        self._reason = None


#: The request the CLI's signal handlers set; ``train()`` polls it when given no request of its own.
PROCESS = StopRequest()


def install_signal_handlers(request: StopRequest = PROCESS) -> dict[int, Callable[..., Any] | int | None]:
    """Make SIGTERM/SIGUSR1 set ``request`` (main thread only); returns the previous handlers."""

    def record(signum: int, _frame: Any) -> None:
        request.set(signal.Signals(signum).name)

    return {sig: signal.signal(sig, record) for sig in STOP_SIGNALS}


def restore(previous: dict[int, Callable[..., Any] | int | None]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
