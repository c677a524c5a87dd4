"""Damaged checkpoints: found before a resume, reported by file, skipped for the newest good one; durable writes.

The runs are deterministic CPU runs (see test_resume.py), so a run that falls back to an older checkpoint
must end with exactly the weights of the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import run_distst, tiny_overrides, write_job

from distst import atomic
from distst.train import checkpoint

MODEL_STATES = "main/mp_rank_00_model_states.pt"


def overrides(out: Path) -> list[str]:
    # Checkpoints at steps 2, 4, 6, 8; the last two kept.
    return tiny_overrides(out, train__steps=8, train__deterministic="true", train__keep_checkpoints=2)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 8-step run: checkpoints step_6 and step_8, and the final weights every fallback must reach."""
    root = tmp_path_factory.mktemp("finished")
    run_distst("train", str(write_job(root / "job.yaml")), *overrides(root / "run"))
    return root / "run"


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run, to damage."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def rerun(run: Path, check: bool = True):
    return run_distst("train", str(write_job(run.parent / "job.yaml")), *overrides(run), check=check)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


def assert_same_weights(run: Path, finished: Path) -> None:
    ours, theirs = final_weights(run), final_weights(finished)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "fallback run ended with different weights"


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / checkpoint.tag_for(step)


# --- a real resume over damaged checkpoints ----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_newest_checkpoint_falls_back_and_ends_bitwise_equal(run: Path, finished: Path, damage: str) -> None:
    target = step_dir(run, 8) / MODEL_STATES
    if damage == "truncate":
        os.truncate(target, target.stat().st_size // 2)
    else:
        target.unlink()
    (run / "summary.json").unlink()

    proc = rerun(run)
    problem = "is missing" if damage == "delete" else "bytes, "
    assert f"checkpoint {step_dir(run, 8)} is damaged: {MODEL_STATES} " in proc.stderr
    assert problem in proc.stderr
    assert "falling back to step_00000006" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert_same_weights(run, finished)
    assert checkpoint.problem(step_dir(run, 8)) is None  # re-saved whole over the damaged one


@pytest.mark.slow
def test_checkpoint_that_deepspeed_cannot_load_falls_back_naming_the_file(run: Path, finished: Path) -> None:
    # Intact as a file (sizes and checksums agree with the manifest) but not what DeepSpeed wrote: only the
    # load itself can tell, e.g. a file from an incompatible DeepSpeed version.
    newest = step_dir(run, 8)
    torch.save({"not": "a DeepSpeed checkpoint"}, newest / MODEL_STATES)
    manifest = checkpoint.read_manifest(newest)
    manifest["files"][MODEL_STATES] = (newest / MODEL_STATES).stat().st_size
    (newest / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    assert checkpoint.problem(newest) is None
    (run / "summary.json").unlink()

    proc = rerun(run)
    assert f"checkpoint {newest} cannot be loaded (rank 0: DeepSpeed cannot load {MODEL_STATES}" in proc.stderr
    assert "resuming from step_00000006 instead of step_00000008" in proc.stderr
    assert_same_weights(run, finished)


@pytest.mark.slow
def test_no_usable_checkpoint_fails_with_one_line(run: Path) -> None:
    for step in (6, 8):
        (step_dir(run, step) / "rng_rank0.pt").unlink()
    proc = rerun(run, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"distst train: error: no usable checkpoint in {run / 'checkpoints'} ")
    assert "step_00000008: rng_rank0.pt is missing; step_00000006: rng_rank0.pt is missing" in last
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_stale_staging_directories_are_removed_at_start(run: Path) -> None:
    # The run is finished: this rerun saves nothing, so only the start-of-run clean-up can remove them.
    stale = [run / "checkpoints" / "step_00000007.tmp", run / "checkpoints" / "step_00000010.tmp"]
    for folder in stale:
        (folder / "main").mkdir(parents=True)
        (folder / "main" / "partial.pt").write_bytes(b"half")
    proc = rerun(run)
    assert not any(folder.exists() for folder in stale)
    assert f"removed {stale[0]}, left by an interrupted save" in proc.stderr
    assert [p.name for p in checkpoint.complete_checkpoints(run / "checkpoints")] == ["step_00000006",
                                                                                      "step_00000008"]


# --- what the checks see ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_manifest_records_every_file_with_its_size(finished: Path) -> None:
    newest = step_dir(finished, 8)
    manifest = checkpoint.read_manifest(newest)
    on_disk = {p.relative_to(newest).as_posix(): p.stat().st_size for p in newest.rglob("*")
               if p.is_file() and p.name != checkpoint.MANIFEST}
    assert manifest["files"] == on_disk and {MODEL_STATES, "state.pt", "rng_rank0.pt"} <= set(on_disk)
    assert (manifest["step"], manifest["world_size"]) == (8, 1)


@pytest.mark.slow
def test_problem_names_the_file_for_each_kind_of_damage(run: Path) -> None:
    newest = step_dir(run, 8)
    assert checkpoint.problem(newest) is None

    original = (newest / MODEL_STATES).read_bytes()
    flipped = bytearray(original)
    flipped[middle_of_largest_tensor(newest / MODEL_STATES)] ^= 0xFF  # torch.load would not notice: a wrong weight
    (newest / MODEL_STATES).write_bytes(bytes(flipped))
    assert checkpoint.problem(newest).startswith(f"{MODEL_STATES} is corrupt (checksum mismatch")
    (newest / MODEL_STATES).write_bytes(original)

    (newest / "state.pt").write_bytes(b"\0" * (newest / "state.pt").stat().st_size)
    assert checkpoint.problem(newest).startswith("state.pt is not a readable torch file")

    (newest / checkpoint.MANIFEST).unlink()
    assert checkpoint.problem(newest).startswith("manifest.json is missing")
    assert checkpoint.newest_valid(run / "checkpoints") == step_dir(run, 6)


def middle_of_largest_tensor(file: Path) -> int:
    """Offset of a byte inside the data of the largest record of a torch file (a zip archive)."""
    with zipfile.ZipFile(file) as archive:
        largest = max(archive.infolist(), key=lambda info: info.compress_size)
    header = file.read_bytes()[largest.header_offset:largest.header_offset + 30]
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return largest.header_offset + 30 + name_len + extra_len + largest.compress_size // 2


# --- durable writes -----------------------------------------------------------------------------------------

def record_fsyncs_and_renames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Wrap the OS calls (not our code) to log ("fsync", path) and ("rename", target) in call order."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, Path.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        real_replace(src, dst)
        events.append(("rename", str(dst)))

    def rename(self: Path, target) -> Path:
        result = real_rename(self, target)
        events.append(("rename", str(target)))
        return result

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "rename", rename)
    return events


@pytest.mark.parametrize("write", ["text", "json", "torch"])
def test_atomic_write_fsyncs_the_file_before_and_the_directory_after_the_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: str) -> None:
    events = record_fsyncs_and_renames(monkeypatch)
    target = tmp_path / "out"
    {"text": lambda: atomic.write_text(target, "x"), "json": lambda: atomic.write_json(target, {"a": 1}),
     "torch": lambda: atomic.torch_save({"a": torch.ones(2)}, target)}[write]()
    assert events == [("fsync", str(tmp_path / "out.tmp")), ("rename", str(target)), ("fsync", str(tmp_path))]


def test_checkpoint_is_sealed_and_published_durably(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staging, final = tmp_path / "step_00000004.tmp", tmp_path / "step_00000004"
    (staging / "main").mkdir(parents=True)
    torch.save({"w": torch.ones(3)}, staging / "main" / "mp_rank_00_model_states.pt")
    torch.save({"step": 4}, staging / "state.pt")
    torch.save(checkpoint.rng_state(), staging / "rng_rank0.pt")
    events = record_fsyncs_and_renames(monkeypatch)

    checkpoint.write_manifest(staging, step=4, world_size=1)
    checkpoint.publish(staging, final)

    rename = events.index(("rename", str(final)))
    flushed = [events.index(("fsync", str(staging / name))) for name in
               ("main/mp_rank_00_model_states.pt", "rng_rank0.pt", "state.pt", checkpoint.MANIFEST)]
    assert flushed == sorted(flushed) and flushed[-1] < rename, "every file, the manifest last, flushed before the rename"
    assert events[rename + 1:] == [("fsync", str(tmp_path))], "the rename itself is flushed"
    assert checkpoint.problem(final) is None


# --- files written by someone else ---------------------------------------------------------------------------

class _Poison:
    """Unpickling this creates ``path``: what a planted checkpoint, mask or model file could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def poison(path: Path, marker: Path) -> None:
    torch.save({"state_dict": _Poison(marker)}, path)  # a valid torch file (checksums hold) that runs code


@pytest.mark.slow
def test_a_resume_over_poisoned_checkpoint_files_refuses_them_unread(run: Path, tmp_path: Path) -> None:
    """Newest checkpoint: DeepSpeed's files (model and optimizer states) replaced (its manifest rewritten to match, so only the
    load can refuse them); the older one: its loop state and RNG file. Nothing runs; one line, exit 2."""
    marker = tmp_path / "pwned"
    newest, older = step_dir(run, 8), step_dir(run, 6)
    targets = {newest: sorted(p for p in (newest / "main").rglob("*.pt")), older: [older / "state.pt", older / "rng_rank0.pt"]}
    for folder, files in targets.items():
        manifest = checkpoint.read_manifest(folder)
        for file in files:
            poison(file, marker)
            manifest["files"][file.relative_to(folder).as_posix()] = file.stat().st_size
        (folder / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    assert targets[newest] and checkpoint.problem(newest) is None
    (run / "summary.json").unlink()
    proc = rerun(run, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("distst train: error: no usable checkpoint") and "rng_rank0.pt" in last, last
    assert "code would run to load it): refused" in last and "trust the source" not in last, last
    assert f"DeepSpeed cannot load {MODEL_STATES}" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not marker.exists()


@pytest.mark.slow
def test_poisoned_model_mask_rewind_and_init_from_files_are_refused_unread(finished: Path, tmp_path: Path) -> None:
    from distst.config import load_config
    from distst.models.io import read_model_file
    from distst.prune import lottery
    from distst.weights import WeightsError

    marker = tmp_path / "pwned"
    model_file = tmp_path / "model.pt"
    poison(model_file, marker)
    with pytest.raises(WeightsError, match="is not a readable distst model file"):
        read_model_file(model_file)
    level_0 = tmp_path / "imp" / "level_0"
    level_0.mkdir(parents=True)
    poison(level_0 / lottery.MASK_FILE, marker)
    poison(level_0 / lottery.REWIND_FILE, marker)
    with pytest.raises(Exception, match="Weights only load failed"):
        lottery.load_masks(tmp_path / "imp", 0)
    cfg = load_config(finished / "config.yaml")
    with pytest.raises(Exception, match="Weights only load failed"):
        lottery.initial_state(cfg, tmp_path / "imp", 1, {})
    proc = run_distst("check", str(write_job(tmp_path / "job.yaml")), *overrides(tmp_path / "new"),
                      f"model.init_from={model_file}", check=False)
    assert proc.returncode == 2 and "model.init_from" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not marker.exists()
