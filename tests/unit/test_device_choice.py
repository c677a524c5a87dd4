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


def test_deterministic_cuda_runs_need_cublas_workspace_config(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from helpers import tiny_config

    from distst.config import ConfigError
    from distst.train.engine import check_deterministic, prepare_process_env

    cfg = tiny_config(tmp_path, train__deterministic="true")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="CUBLAS_WORKSPACE_CONFIG=:4096:8"):
        check_deterministic(cfg, torch.device("cuda", 0))
    check_deterministic(cfg, torch.device("cpu"))  # the CPU needs nothing
    check_deterministic(tiny_config(tmp_path), torch.device("cuda", 0))  # nor a non-deterministic run
    prepare_process_env()  # what every entry point calls first: sets it unless the user chose a value
    check_deterministic(cfg, torch.device("cuda", 0))
