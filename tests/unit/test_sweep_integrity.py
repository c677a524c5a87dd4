"""The sealed copy of Ray Tune's driver state (distst.sweep.integrity): no Ray running, a folder of files made here."""

from __future__ import annotations

import base64
import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, patience, subprocess_env

from distst.sweep.integrity import (
    SealDriverState,
    SweepKeyError,
    SweepStateTampered,
    driver_files,
    load_key,
    restore_sealed,
    seal,
    sealed_files,
    sealed_path,
)


class _Poison:
    """Unpickling this creates ``path``: what a planted tuner.pkl could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config" / "distst" / "sweep.key"
    monkeypatch.setenv("DISTST_KEY_FILE", str(path))
    return path


def _driver_files() -> dict[str, bytes]:
    return {"tuner.pkl": pickle.dumps({"tuner": 1}),
            "experiment_state-2026-01-01_00-00-00.json": json.dumps({"trial_data": []}).encode(),
            "basic-variant-state-2026-01-01_00-00-00.json": b"{}"}


@pytest.fixture
def state(tmp_path: Path, key_file: Path) -> Path:
    """A sweep's ``tune`` folder, shaped like Ray's, with its driver files sealed."""
    folder = tmp_path / "sweep" / "tune"
    trial = folder / "run_trial_00000_0"
    (trial / "checkpoint_000000").mkdir(parents=True)
    for name, data in _driver_files().items():
        (folder / name).write_bytes(data)
    (trial / "params.pkl").write_bytes(pickle.dumps({"prune.rate": 0.2}))
    (trial / "result.json").write_text("{}\n")
    (trial / "checkpoint_000000" / "distst_run.json").write_text('{"run_dir": "x", "iteration": 0}')
    assert seal(folder, driver_files(folder)) == tmp_path / "sweep" / "tune.sealed.json"
    return folder


def test_the_sealed_copy_round_trips_and_the_key_is_private(state: Path, key_file: Path) -> None:
    assert sealed_files(state) == _driver_files()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_bytes()) == 32
    assert not list(key_file.parent.glob(".*.tmp")), "the temporary key file was left behind"
    assert not list(state.parent.glob(".*.tmp")), "the temporary sealed copy was left behind"


def test_an_existing_key_is_never_replaced(key_file: Path) -> None:
    first = load_key()
    assert load_key() == first and key_file.read_bytes() == first


def test_a_resume_puts_back_exactly_the_sealed_copy_and_drops_every_other_pickle(state: Path, tmp_path: Path) -> None:
    """Whatever was planted (or written after the last seal by a driver killed outright) is replaced before
    Tune reads it: nothing planted is ever unpickled, and the folder is the sealed state again."""
    marker = tmp_path / "pwned"
    trial = state / "run_trial_00000_0"
    (state / "tuner.pkl").write_bytes(pickle.dumps(_Poison(marker)))
    (state / "experiment_state-2099-01-01_00-00-00.json").write_text('{"newer": "unsealed"}')
    (state / "searcher-state-2099.pkl").write_bytes(pickle.dumps(_Poison(marker)))
    (state / "link.pkl").symlink_to(tmp_path / "outside.pkl")
    (trial / "params.pkl").write_bytes(pickle.dumps(_Poison(marker)))
    (trial / "error.pkl").write_bytes(pickle.dumps(_Poison(marker)))
    (trial / "checkpoint_000000" / "extra.pkl").write_bytes(pickle.dumps(_Poison(marker)))
    assert restore_sealed(state) == sorted(_driver_files())
    assert {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()} == _driver_files()
    assert not list(state.rglob("*.pkl"))[1:] and [p.name for p in state.rglob("*.pkl")] == ["tuner.pkl"]
    assert (trial / "result.json").is_file() and (trial / "checkpoint_000000" / "distst_run.json").is_file()
    pickle.loads((state / "tuner.pkl").read_bytes())  # the sealed one: harmless
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["edited body", "edited hmac", "not json", "missing"])
def test_a_tampered_or_missing_sealed_copy_is_refused_and_nothing_changes(state: Path, damage: str,
                                                                          tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (state / "tuner.pkl").write_bytes(pickle.dumps(_Poison(marker)))
    path = sealed_path(state)
    record = json.loads(path.read_text())
    if damage == "edited body":
        body = json.loads(record["body"])
        body["files"]["tuner.pkl"] = base64.b64encode(pickle.dumps(_Poison(marker))).decode()
        record["body"] = json.dumps(body, sort_keys=True, separators=(",", ":"))
        path.write_text(json.dumps(record))
    elif damage == "edited hmac":
        record["hmac"] = "0" * 64
        path.write_text(json.dumps(record))
    elif damage == "not json":
        path.write_bytes(pickle.dumps(_Poison(marker)))
    else:
        path.unlink()
    with pytest.raises(SweepStateTampered, match="refusing to unpickle its Tune state") as err:
        restore_sealed(state)
    assert "\n" not in str(err.value) and "--out" in str(err.value)
    assert str(os.environ["DISTST_KEY_FILE"]) in str(err.value)
    assert (state / "run_trial_00000_0" / "params.pkl").is_file(), "a refused resume removed files"
    assert not marker.exists()


def test_a_sealed_copy_naming_a_path_outside_the_folder_is_refused(state: Path) -> None:
    seal(state, {"../escape.json": b"{}"})
    with pytest.raises(SweepStateTampered, match="names a file outside its folder"):
        restore_sealed(state)
    assert not (state.parent / "escape.json").exists()


def test_a_state_sealed_with_another_users_key_is_refused(state: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone else's distst sealed it (their key): this user's key does not match."""
    monkeypatch.setenv("DISTST_KEY_FILE", str(tmp_path / "other" / "sweep.key"))
    with pytest.raises(SweepStateTampered, match="not written by this user's distst sweep"):
        sealed_files(state)


class _Storage:
    def __init__(self, staging: Path) -> None:
        self.experiment_driver_staging_path = str(staging)


class _Trial:
    """What the callback reads of Tune's Trial: where the driver stages its state."""

    def __init__(self, staging: Path) -> None:
        self.storage = _Storage(staging)


def test_the_callback_reseals_after_each_step_that_saved_a_new_state(state: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    sealer = SealDriverState(state)
    sealer.on_step_end(iteration=0, trials=[_Trial(staging)])
    assert sealer.seals == 0, "sealed before Tune saved an experiment state"
    (staging / "experiment_state-a.json").write_text('{"step": 1}')
    (staging / "tmp-experiment_state-a.json").write_text("half written")
    sealer.on_step_end(iteration=1, trials=[_Trial(staging)])
    sealer.on_step_end(iteration=2, trials=[_Trial(staging)])
    assert sealer.seals == 1, "resealed an unchanged state"
    assert sealed_files(state) == {"tuner.pkl": (state / "tuner.pkl").read_bytes(),
                                   "experiment_state-a.json": b'{"step": 1}'}
    (staging / "experiment_state-a.json").write_text('{"step": 2}')
    sealer.on_step_end(iteration=3, trials=[_Trial(staging)])
    assert sealer.seals == 2 and sealed_files(state)["experiment_state-a.json"] == b'{"step": 2}'


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_a_key_others_can_read_or_write_is_refused(key_file: Path, mode: int) -> None:
    load_key()
    key_file.chmod(mode)
    with pytest.raises(SweepKeyError, match="readable or writable by others") as err:
        load_key()
    assert "\n" not in str(err.value)


def test_a_key_of_the_wrong_size_is_refused(key_file: Path) -> None:
    key_file.parent.mkdir(parents=True)
    key_file.write_bytes(b"short")
    key_file.chmod(0o600)
    with pytest.raises(SweepKeyError, match="holds 5 bytes, not 32"):
        load_key()


def test_the_default_key_lives_in_the_xdg_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distst.sweep.integrity import key_path

    monkeypatch.delenv("DISTST_KEY_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert key_path() == tmp_path / "xdg" / "distst" / "sweep.key"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert key_path() == tmp_path / "home" / ".config" / "distst" / "sweep.key"


def test_resume_refuses_an_unsealed_state_before_ray_starts(state: Path, tmp_path: Path) -> None:
    """`distst tune --resume` on a sweep folder someone else wrote (no sealed copy): one line, exit code 2,
    nothing unpickled, nothing removed."""
    marker = tmp_path / "pwned"
    (state / "tuner.pkl").write_bytes(pickle.dumps(_Poison(marker)))
    sealed_path(state).unlink()
    sweep = REPO / "tune" / "imp_sweep.yaml"
    proc = subprocess.run([sys.executable, "-m", "distst", "tune", str(sweep), "--out", str(state.parent),
                           "--resume"], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=patience(120))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "refusing to unpickle its Tune state" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not marker.exists() and (state / "tuner.pkl").is_file()
