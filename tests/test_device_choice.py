"""Which accelerator a process trains on, for the environment each launcher gives (a pure function)."""

from __future__ import annotations

import pytest

from distst.train.engine import device_index


@pytest.mark.parametrize(("launcher", "local_rank", "visible", "current", "expected"), [
    ("torchrun, 4 GPUs visible to every process", 3, 4, 0, 3),
    ("srun --gpus-per-task=1: one GPU visible per task", 3, 1, 0, 0),
    ("CUDA_VISIBLE_DEVICES set per process", 1, 1, 0, 0),
    ("Ray Train set the worker's device already", 0, 4, 2, 2),
    ("a single process", 0, 1, 0, 0),
])
def test_device_follows_the_launcher(launcher: str, local_rank: int, visible: int, current: int,
                                     expected: int) -> None:
    assert device_index(local_rank, visible, current) == expected, launcher


def test_more_processes_than_devices_is_one_line() -> None:
    with pytest.raises(RuntimeError, match="local rank 4 has no device of its own: 4 are visible"):
        device_index(4, 4, 0)
    with pytest.raises(RuntimeError, match="no visible device"):
        device_index(0, 0, 0)
