"""The unit layer: no process group, no DeepSpeed engine, no service (docs/testing.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch.distributed as dist


@pytest.fixture(autouse=True)
def _no_process_group() -> Iterator[None]:
    # One xdist worker runs every layer: a group an integration test left behind is not this test's.
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        _forget_deepspeed_backend()
    yield
    if dist.is_available() and dist.is_initialized():
        pytest.fail("a unit test started a process group: move it to tests/integration", pytrace=False)


def _forget_deepspeed_backend() -> None:
    """DeepSpeed caches its backend and groups (the world, data-parallel, ...) over the destroyed group; the next
    integration test's engine must not reuse them ("Group ... is not registered")."""
    import sys

    comm = sys.modules.get("deepspeed.comm.comm")
    if comm is not None:
        comm.cdb = None
    groups = sys.modules.get("deepspeed.utils.groups")
    for name, value in vars(groups).items() if groups is not None else ():
        if name.startswith("_") and name.isupper():
            if isinstance(value, dist.ProcessGroup):
                setattr(groups, name, None)
            elif isinstance(value, dict):
                value.clear()
