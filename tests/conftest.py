"""Shared test set-up: CPU DeepSpeed, offline W&B, small deterministic torch."""

from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist (`make test` runs 2 workers) each worker takes one core.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _process_env() -> None:
    """What the CLI does first: launcher variables for a world of one (DeepSpeed reads them)."""
    from distst.train.engine import prepare_process_env

    prepare_process_env()
