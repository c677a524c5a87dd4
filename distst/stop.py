"""Stop requests (SIGTERM, SIGUSR1): remembered from the moment a command starts, acted on by the loop.

Slurm's pre-time-limit signal can arrive while a task is still importing torch, starting DeepSpeed or
between two IMP levels; Python's default action for SIGUSR1 would kill the task. Commands install the
handler first, and the training loop checkpoints and exits at its next step boundary.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_requested: list[int] = []


def _record(signum: int, _frame: Any) -> None:
    _requested.append(signum)


def install() -> dict[int, Callable[..., Any] | int | None]:
    """Record stop signals from now on; returns the previous handlers (for ``restore``)."""
    return {sig: signal.signal(sig, _record) for sig in STOP_SIGNALS}


def restore(previous: dict[int, Callable[..., Any] | int | None]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def requested() -> int | None:
    """The first stop signal received and not yet acted on, if any."""
    return _requested[0] if _requested else None


def acted_on() -> None:
    _requested.clear()
