"""`slurm_cluster`: a real one-node Slurm cluster (slurmctld + slurmd + munged) for the whole test session.

Built on slurm/dev/cluster.py (loaded by path: slurm/ is not a package). The cluster starts once, on
first use, in well under a second once slurm-wlm/munge are installed (it installs them with apt-get if
needed), and is stopped at the end of the session, daemons by PID, state dir removed.

Using it in a test module (the `pytest_plugins` line registers the fixture once for the whole session;
importing the fixture function by name also works but trips ruff's F811)::

    import pytest
    from slurm_fixtures import REPO_ROOT

    pytest_plugins = ["slurm_fixtures"]

    @pytest.mark.slurm
    def test_imp_adain_script(slurm_cluster, tmp_path):
        job = slurm_cluster.sbatch(REPO_ROOT / "slurm/imp_adain.sh", "--time=10",
                                   env={"RUN_DIR": str(tmp_path), "EPOCHS": "1"}, cwd=REPO_ROOT, timeout=patience(600))
        assert (job.state, job.exit_code) == ("COMPLETED", "0:0"), job.output()

`sbatch(script, *sbatch_args, env=..., wait=True, timeout=..., cwd=...)` returns a `Job` once it has ended
(`job.state`, `job.exit_code` like "0:0", `job.restarts`, `job.output()`, `job.info()` for any other
`scontrol show job` field); `wait=False` returns at once, then `job.wait(["RUNNING"])`,
`job.signal("USR1")` (= `scancel --signal=USR1 --batch`), `slurm_cluster.command(["scontrol", ...])`.
A script may also be given as text starting with "#!". `env` adds to `slurm_cluster.env` (which has
SLURM_CONF; use it for any subprocess that runs Slurm commands itself). Jobs that can never run here
(more CPUs than the node has) are rejected by sbatch (ClusterError) or raise JobCannotRun while waiting.

Skips only when Slurm cannot be installed because apt-get is missing AND we are not root; with CI=true
it never skips (fails instead). DISTST_SLURM_KEEP=1 keeps the state dir (logs, outputs) after the run.

PYTEST_DONT_REWRITE: test modules import this before pytest registers it as a plugin; without this
marker pytest warns that it cannot rewrite the asserts of an already imported module.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from helpers import patience

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_PY = REPO_ROOT / "slurm" / "dev" / "cluster.py"


def load_cluster_module() -> ModuleType:
    """Import slurm/dev/cluster.py once under a private name (registered first: dataclasses need it)."""
    name = "distst_slurm_dev_cluster"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, CLUSTER_PY)
        assert spec and spec.loader, f"cannot load {CLUSTER_PY}"
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


cluster_module = load_cluster_module()
SlurmCluster = cluster_module.SlurmCluster
Job = cluster_module.Job
ClusterError = cluster_module.ClusterError
ClusterUnavailable = cluster_module.ClusterUnavailable
JobCannotRun = cluster_module.JobCannotRun


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _start_or_skip() -> SlurmCluster:
    cluster = SlurmCluster()
    try:
        return cluster.start()
    except ClusterUnavailable as error:
        if error.not_root and error.no_apt and not _in_ci():
            pytest.skip(f"no Slurm cluster possible here: {error}")
        pytest.fail(f"Slurm cluster unavailable: {error}", pytrace=False)


class _SharedCluster:
    """One cluster per session even if several modules import the fixture (each import is its own
    FixtureDef in pytest, so the fixture body can run more than once): reference-counted."""

    cluster: SlurmCluster | None = None
    users = 0

    @classmethod
    def acquire(cls) -> SlurmCluster:
        if cls.cluster is None:
            cls.cluster = _start_or_skip()
        cls.users += 1
        return cls.cluster

    @classmethod
    def release(cls) -> None:
        cls.users -= 1
        if cls.users == 0 and cls.cluster is not None:
            cls.cluster.stop(remove=os.environ.get("DISTST_SLURM_KEEP") != "1")
            cls.cluster = None


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running one-node Slurm cluster; see the module docstring for the API."""
    cluster = _SharedCluster.acquire()
    try:
        yield cluster
    finally:
        _SharedCluster.release()


def wait_until(predicate, job, timeout: float = patience(300)) -> None:
    """Poll ``predicate`` (an event: a file, a log line) while the Slurm ``job`` runs, with a generous cap."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert job.state not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), job.output()
        assert time.monotonic() < deadline, f"timed out: {job.output()}"
        time.sleep(0.1)
