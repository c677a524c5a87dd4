"""The CLI's start-up and its bad-input contract: ``--help`` imports nothing heavy, a stop signal in the first
instant is a checkpoint (exit 75), and bad input is one line on stderr with exit code 2 (``DISTST_DEBUG=1``
adds the traceback); anything else is a bug and keeps its traceback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, distst_command, patience, run_distst, subprocess_env, tiny_overrides, write_job
from PIL import Image

from distst.cli import build_parser, is_user_error, main, parse
from distst.errors import DataError

HEAVY_MODULES = ("torch", "torchvision", "webdataset", "deepspeed", "pydantic", "wandb")
EVERY_HELP = ("", "stylize", "models", "convert-vgg", "shards", "shards build", "shards verify", "bench",
              "bench data", "train", "imp", "report", "check", "tune")


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"distst {argv[0]}: error: "), err
    return lines[0]


# --- start-up ---------------------------------------------------------------------------------------

def test_help_of_every_command_imports_nothing_heavy() -> None:
    script = (
        "import sys\n"
        "from distst.cli import main\n"
        f"for command in {EVERY_HELP!r}:\n"
        "    try:\n"
        "        main([*command.split(), '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=patience(60))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_sigterm_in_the_first_instant_of_train_checkpoints_and_exits_75(tmp_path: Path) -> None:
    job = write_job(tmp_path / "job.yaml")
    argv = distst_command("train", str(job), *tiny_overrides(tmp_path / "run"))
    proc = subprocess.Popen(argv, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(0.2)  # still importing: the handler must already be in place
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=patience(300))
    assert proc.returncode == 75, err[-3000:]
    resumed = run_distst("train", str(job), *tiny_overrides(tmp_path / "run"))  # resumable: finishes the run
    assert resumed.returncode == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 4


def test_commands_that_never_poll_stop_requests_keep_default_signals(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert signal.getsignal(signal.SIGTERM) is before


def test_overrides_after_nproc_count_in_order() -> None:
    args = parse(build_parser(), ["train", "job.yaml", "train.lr=1", "--nproc", "2", "train.lr=2", "data.crop=64"])
    assert args.nproc == 2 and args.overrides == ["train.lr=1", "train.lr=2", "data.crop=64"]


def test_unknown_options_are_still_argparse_errors(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(build_parser(), ["train", "job.yaml", "--nproc", "2", "--bogus"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


# --- one line, or a traceback with DISTST_DEBUG=1; bugs keep theirs ---------------------------------

def test_debug_env_shows_the_traceback_of_a_user_error(tmp_path: Path) -> None:
    argv = distst_command("report", str(tmp_path / "missing"))
    plain = subprocess.run(argv, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=patience(60))
    debug = subprocess.run(argv, cwd=REPO, env={**subprocess_env(), "DISTST_DEBUG": "1"}, capture_output=True,
                           text=True, timeout=patience(60))
    assert plain.returncode == debug.returncode == 2
    assert plain.stderr.strip().splitlines() == [f"distst report: error: run directory {tmp_path / 'missing'} "
                                                 "does not exist"]
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()


def test_only_bad_input_is_a_user_error() -> None:
    assert is_user_error(DataError("bad shard")) and is_user_error(FileNotFoundError("x"))
    assert not is_user_error(RuntimeError("a bug")) and not is_user_error(KeyError("a bug"))


def test_report_on_a_missing_directory_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "does not exist" in one_line_error(capsys, ["report", str(tmp_path / "nope")])


# --- shards -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["shards", "build", "{tmp}/x-{{000..001.tar", "--out", "{tmp}/out", "--name", "x", "--workers", "1"],
    ["bench", "data", "--shards", "{tmp}/x-{{000..001.tar", "--batches", "1", "--warmup", "0", "--workers", "0"],
])
def test_unbalanced_brace_pattern_is_one_line(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    line = one_line_error(capsys, [a.format(tmp=tmp_path) for a in argv])
    assert "Unbalanced braces" in line and "name-{000000..000009}.tar" in line


@pytest.mark.parametrize("empty", ["no members", "zero bytes"])
def test_shard_without_samples_is_one_line(empty: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shard = tmp_path / "empty-000000.tar"
    if empty == "no members":
        tarfile.open(shard, "w").close()
    else:
        shard.touch()
    line = one_line_error(capsys, ["bench", "data", "--shards", str(shard), "--batches", "1", "--warmup", "0",
                                   "--workers", "0"])
    assert f"shard {shard} holds no samples" in line


def test_build_with_no_usable_image_fails_listing_reasons(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_text("not an image")
    (src / "b.png").touch()
    good = np.zeros((20, 20, 3), dtype=np.uint8)
    Image.fromarray(good).save(src / "c.jpg")
    (src / "c.jpg").write_bytes((src / "c.jpg").read_bytes()[:60])  # cut inside the JPEG header
    out = tmp_path / "out"
    line = one_line_error(capsys, ["shards", "build", str(src), "--out", str(out), "--name", "bad", "--workers", "1",
                                   "--resize", "16"])
    assert "no usable image among the 3 inputs" in line
    assert "a.jpg: not an image" in line and "b.png: empty file" in line and "c.jpg:" in line
    assert sorted(p.name for p in out.iterdir()) == []  # no empty shard, journal or manifest left behind
