"""Ranks of a run: whether a process group of several ranks is up, this process's rank, and deciding
something once on rank 0 for every rank.

Safe to import anywhere and cheap: ``torch.distributed`` is only looked at when something already imported
it (a process that never imported torch has no process group).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import DiststError

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a process group with more than one rank is up."""
    if "torch.distributed" not in sys.modules:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank: the process group's, else ``$RANK`` (a worker before its group is up), else 0."""
    if is_distributed():
        import torch.distributed as dist

        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def on_main_then_shared(decide: Callable[[], T]) -> T:
    """Run ``decide`` on rank 0 and give its result, or the ``DiststError`` it raised (same class, same
    message), to every rank. Collective when distributed: every rank must call it."""
    if not is_distributed():
        return decide()
    import torch.distributed as dist

    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", decide())
        except DiststError as err:
            box[0] = ("error", (type(err), str(err)))
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "ok":
        return value
    error_type, message = value
    try:
        error = error_type(message)
    except TypeError:  # a class whose constructor takes more than the message: keep the message
        error = DiststError(message)
    raise error
