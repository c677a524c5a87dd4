"""A wheel install (not editable) runs from another directory: the bundled sample shards come with the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import REPO, patience, subprocess_env, tiny_overrides

from distst.data.bundled import CONTENT, STYLE

pytestmark = pytest.mark.slow

SKIP = shutil.ignore_patterns(".venv", ".git", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                              ".ruff_cache", "wandb", "weights")


def run(*args: object, cwd: Path, timeout: float = patience(600)) -> str:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("install")
    source = root / "src"  # a copy, so that the build writes nothing into the checkout
    shutil.copytree(REPO, source, ignore=SKIP)
    env = root / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", env, cwd=root)  # no old setuptools of its own
    # the dependencies are this environment's (a path line: its .pth files, e.g. the editable distst, stay unread)
    site = Path(run(env / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                    cwd=root).strip())
    (site / "project_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run(sys.executable, "-m", "pip", "--python", env / "bin" / "python", "install", "--no-deps", "--no-build-isolation",
        "--no-index", "-q", source, cwd=root)
    shutil.rmtree(source)
    return env


def test_the_installed_package_runs_from_another_directory(venv: Path, tmp_path: Path) -> None:
    where = run(venv / "bin" / "python", "-c", "import distst; print(distst.__file__)", cwd=tmp_path).strip()
    assert Path(where).is_relative_to(venv) and "site-packages" in where, where
    distst = venv / "bin" / "distst"
    out = run(distst, "bench", "data", "--batches", "3", "--warmup", "1", "--batch-size", "2", "--crop", "32",
              "--workers", "0", cwd=tmp_path)
    assert out.strip()
    run(distst, "shards", "sample", "--out", tmp_path / "s", "--workers", "1", cwd=tmp_path)
    assert (tmp_path / "s" / "content.json").is_file() and (tmp_path / "s" / "style.json").is_file()
    bundled = {"data__content": CONTENT, "data__style": STYLE}  # the installed copy's shards, not the checkout's
    run(distst, "train", REPO / "jobs" / "local" / "adain.yaml", *tiny_overrides(tmp_path / "run", **bundled),
        cwd=tmp_path)
    assert any((tmp_path / "run").iterdir())
