"""Atomic, resumable checkpoints of a DeepSpeed engine plus everything else a bitwise resume needs.

A checkpoint is a directory ``checkpoints/step_00000100``: one folder per optimizer stage of the model
(``main/`` for style transfer; ``generator/``, ``discriminator/`` for a GAN) with DeepSpeed's own files
(module, optimizer, scheduler; ZeRO partitions per rank), ``rng_rank<r>.pt`` for every rank, and ``state.pt``
(step, method state). It is written as ``step_00000100.tmp`` and renamed only when every rank has finished,
so a kill at any moment leaves the last good checkpoint intact.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .engine import DistInfo

def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
             "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engines: Mapping[str, Any], root: Path, step: int, state: dict[str, Any], info: DistInfo,
         keep: int) -> Path:
    """Write checkpoint ``step`` of every stage's engine from every rank (collective); returns its directory."""
    final = root / tag_for(step)
    staging_tag = tag_for(step) + ".tmp"
    if info.is_main:
        shutil.rmtree(root / staging_tag, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    for stage, engine in engines.items():
        engine.save_checkpoint(str(root / staging_tag), tag=stage, save_latest=False)
    (root / staging_tag).mkdir(parents=True, exist_ok=True)  # DeepSpeed creates it on writing ranks only
    torch.save(rng_state(), root / staging_tag / f"rng_rank{info.rank}.pt")
    if info.is_main:
        torch.save(state, root / staging_tag / "state.pt")
    dist.barrier()
    if info.is_main:
        shutil.rmtree(final, ignore_errors=True)
        (root / staging_tag).rename(final)
        for old in complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints, oldest first (staging directories of interrupted saves are ignored)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / "state.pt").is_file())


def latest(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def load(engines: Mapping[str, Any], path: Path, info: DistInfo) -> dict[str, Any]:
    """Restore every stage's engine (module, optimizer, scheduler) and this rank's RNG; returns the loop state."""
    for stage, engine in engines.items():
        load_path, _ = engine.load_checkpoint(str(path), tag=stage, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load stage {stage!r} of the checkpoint in {path}")
    rng_file = path / f"rng_rank{info.rank}.pt"
    if not rng_file.is_file():
        raise RuntimeError(f"{rng_file} is missing: was the checkpoint written by a run with a different "
                           "number of processes? Resume with the same world size.")
    set_rng_state(torch.load(rng_file, weights_only=True))
    return torch.load(path / "state.pt", weights_only=True)
