"""Resuming a run with another number of processes than wrote its checkpoint (a requeued job on another
allocation: N -> M, ZeRO 0-2).

DeepSpeed's part. ZeRO-0 keeps the whole optimizer state (and bf16's fp32 masters) in rank 0's module file,
which loads at any world size. ZeRO-1/2 keep one partition per rank, and DeepSpeed refuses another data-parallel
degree for them; its answer is the universal checkpoint: ``ds_to_universal`` rewrites the partitions as one
folder per parameter (fp32 master, Adam moments, step), which an engine loads at any degree
(``checkpoint.load_universal``). That is used here, converting into ``step_N.universal.tmp`` beside the
checkpoint (removed after the load, and by the next start if a kill interrupts it). ZeRO's ``elastic_checkpoint``
option was not chosen: this DeepSpeed checks the degree before that code is reached, and it would change every
checkpoint's format. The conversion and the universal load read with ``torch.load(weights_only=False)``; here every
``torch.load`` they make is forced to ``weights_only=True`` (DeepSpeed's own state types allowed), as every other
load of distst is. ZeRO-3 is refused: its universal path is not wired or tested here.

distst's part. Every rank's RNG is re-seeded deterministically from the checkpoint; the data stream's per-rank
positions are merged and dealt out again (``distst.data.loader``: nothing read is lost or repeated); a per-rank
object that cannot be merged (a CycleGAN's per-rank image pools) refuses in one line, before start-up
(``problem``, which ``distst check`` and the preflight call too). The loop records the change in metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import random
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.samples import derive_seed
from ..distributed import on_main_then_shared
from ..errors import DiststError
from .engine import deepspeed_state_types

UNIVERSAL_SUFFIX = ".universal.tmp"  # a staging-like name: remove_stale_staging clears one a kill left behind


class ConversionError(DiststError, RuntimeError):
    """DeepSpeed's universal conversion failed on rank 0 (the message names the folder): every rank gets it."""


class CannotRegroup(ValueError):
    """A per-rank state that cannot be merged across another number of processes (the message says why)."""


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside loads with ``weights_only=True`` (DeepSpeed's conversion passes False)."""
    real = torch.load

    def safe_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(deepspeed_state_types()):
            return real(*args, **kwargs)

    torch.load = safe_load  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = real  # type: ignore[assignment]


# --- what can change -------------------------------------------------------------------------------------------

def problem(path: Path, written_by: int, world_size: int, zero_stage: int) -> str | None:
    """Why checkpoint ``path`` (of ``written_by`` processes) cannot resume with ``world_size``; None when it can."""
    if written_by == world_size:
        return None
    head = f"{path} was written by {written_by} process(es) and this run has {world_size}"
    advice = f"resume with --nproc {written_by} (or as many Slurm tasks), or move {path.parent} away to start over"
    if zero_stage == 3 or any(path.glob("*/zero_pp_rank_*_model_states.pt")):
        return f"{head}: a ZeRO-3 checkpoint resumes only at its own world size; {advice}"
    try:
        saved = torch.load(path / "rng_rank0.pt", weights_only=True).get("model_rank_state") or {}
    except Exception:  # noqa: BLE001 - a damaged file: the checkpoint checks report it by name
        return None
    if any(t.numel() for t in saved.values()):
        return f"{head}: {rank_state_refusal(saved)}; {advice}"
    return None


def rank_state_refusal(saved: dict[str, torch.Tensor]) -> str:
    names = ", ".join(sorted(saved)[:3]) + (", ..." if len(saved) > 3 else "")
    return (f"the model keeps state of its own on every rank ({names}: e.g. a GAN's image pools), which cannot be "
            "merged into another number of processes")


def partitioned(stage_dir: Path) -> bool:
    """Whether DeepSpeed partitioned this stage's optimizer state across the ranks (ZeRO-1/2)."""
    return any(stage_dir.glob("*zero_pp_rank_*_optim_states.pt"))


# --- loading -----------------------------------------------------------------------------------------------------

def load_engine(engine: Any, path: Path, stage: str) -> str | None:
    """Load ``path``'s ``stage`` into ``engine`` at this world size (collective); DeepSpeed's load path."""
    if not partitioned(path / stage):
        load_path, _ = engine.load_checkpoint(str(path), tag=stage, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        return load_path
    universal = path.parent / (path.name + UNIVERSAL_SUFFIX)

    def convert() -> None:
        from argparse import Namespace

        from deepspeed.checkpoint import ds_to_universal

        shutil.rmtree(universal / stage, ignore_errors=True)
        try:
            with weights_only_loads(), contextlib.redirect_stdout(None):  # its progress prints are no user's concern
                ds_to_universal.main(Namespace(input_folder=str(path / stage), output_folder=str(universal / stage),
                                               num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                                               strict=True, inject_missing_state=True))
        except Exception as err:  # noqa: BLE001 - anything; the other ranks wait for rank 0's answer
            text = (str(err).strip().splitlines() or [""])[0]
            raise ConversionError(f"DeepSpeed's universal conversion of {path / stage} failed: "
                                  f"{type(err).__name__}: {text}") from None

    on_main_then_shared(convert)  # rank 0 converts; every rank waits for it
    engine._config.load_universal_checkpoint = True
    try:
        with weights_only_loads():
            load_path, _ = engine.load_checkpoint(str(universal), tag=stage, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
    finally:
        engine._config.load_universal_checkpoint = False  # later saves and loads are ordinary ones
    return load_path


def remove_conversion(path: Path) -> None:
    shutil.rmtree(path.parent / (path.name + UNIVERSAL_SUFFIX), ignore_errors=True)


def reseed(path: Path, step: int, rank: int, world_size: int) -> None:
    """This rank's RNG from the checkpoint and its new place: the same on every re-run of the same change."""
    saved = torch.load(path / "rng_rank0.pt", weights_only=True)["torch"]
    seed = derive_seed("resplit", step, rank, world_size, bytes(saved[:64].tolist()).hex())
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def old_rank_states(path: Path, written_by: int) -> list[dict[str, Any]]:
    """Every old rank's own saved objects (its RNG left out), in rank order."""
    from .checkpoint import RNG_KEYS

    states = []
    for rank in range(written_by):
        own = torch.load(path / f"rng_rank{rank}.pt", weights_only=True)
        states.append({k: v for k, v in own.items() if k not in RNG_KEYS})
    return states


def regroup(obj: Any, name: str, states: Sequence[Any]) -> Any:
    """The state ``obj`` starts from on this rank, given every old rank's: its own ``regroup`` decides."""
    merge = getattr(obj, "regroup", None)
    if merge is None:
        raise CannotRegroup(f"{name}: a per-rank state with no way to merge it into another number of processes")
    return merge(list(states))
