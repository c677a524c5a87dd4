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


#: Tests whose xdist group did not hold (see ``pytest_collection_finish``), with why.
UNGROUPED: dict[str, str] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under ``--dist loadgroup`` every test with an ``xdist_group`` mark must carry its group in its node id:
    that suffix is all that keeps the Slurm tests (one shared cluster) and the Ray tests on one worker each.
    pytest 9.2 derives node ids in a way pytest-xdist 3.8 cannot edit, so the groups silently stopped holding
    (pyproject pins pytest < 9.2): such tests fail at once instead of two workers sharing one cluster."""
    if not session.config.getoption("loadgroup", default=False):  # absent without pytest-xdist's -n
        return
    for item in session.items:
        if item.get_closest_marker("xdist_group") is not None and "@" not in item.nodeid:
            UNGROUPED[item.nodeid] = (f"pytest-xdist's --dist loadgroup did not put this test in its group: this "
                                      f"pytest ({pytest.__version__}) and pytest-xdist do not work together; "
                                      "install the versions pyproject.toml's dev extra names")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.nodeid in UNGROUPED:
        pytest.fail(UNGROUPED[item.nodeid], pytrace=False)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _process_env() -> None:
    """What the CLI does first: launcher variables for a world of one (DeepSpeed reads them)."""
    from distst.train.engine import prepare_process_env

    prepare_process_env()


@pytest.fixture(autouse=True, scope="session")
def _sweep_key(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The sweeps' seal key (distst.sweep.integrity) in a temporary folder, never the real ~/.config."""
    os.environ["DISTST_KEY_FILE"] = str(tmp_path_factory.mktemp("sweep_key") / "sweep.key")
