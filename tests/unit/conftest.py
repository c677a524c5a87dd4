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
    yield
    if dist.is_available() and dist.is_initialized():
        pytest.fail("a unit test started a process group: move it to tests/integration", pytrace=False)
