"""Divergence: a non-finite loss stops training at once, before its weights reach a checkpoint or a file.

A NaN or infinite loss means the weights that produced it (or the step that followed) are garbage; going on
would write NaN weights into checkpoints, ``model.pt`` and the rewind point, NaN into the JSON records, and
exit 0. Every rank agrees on the verdict (one collective), so no rank is left waiting in the next step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import torch.distributed as dist

from ..distributed import is_distributed
from ..errors import DiststError
from . import checkpoint


class TrainingDiverged(DiststError):
    """Training produced a non-finite loss or non-finite weights (printed as one line, exit code 2: it is the
    job's settings, such as the learning rate, that have to change)."""


def _non_finite(values: Mapping[str, float]) -> bool:
    return any(isinstance(v, float) and not math.isfinite(v) for v in values.values())


def _agreed(local_bad: bool, device: torch.device) -> bool:
    flag = torch.tensor([1.0 if local_bad else 0.0], device=device)
    if is_distributed():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _last_good(workdir: Path) -> str:
    saved = checkpoint.complete_checkpoints(workdir / "checkpoints")
    return (f"the last good checkpoint, {saved[-1]}, is kept" if saved
            else "no checkpoint had been written")


def _terms(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(values.items()))


def raise_diverged(terms: Mapping[str, float], step: int, workdir: Path) -> None:
    """Raise ``TrainingDiverged`` for ``step``, whose loss terms were not finite on this rank or another (the
    loop agrees on that in its one per-step collective, so every rank raises together)."""
    where = _terms(terms) if _non_finite(terms) else "non-finite on another rank"
    raise TrainingDiverged(f"training diverged at step {step}: non-finite loss ({where}); {_last_good(workdir)} "
                           "and nothing of this step was saved; lower train.lr or set "
                           "deepspeed.gradient_clipping, and start again in a new run directory")


def check_parameters(parameters: Iterable[torch.Tensor], step: int, workdir: Path, device: torch.device) -> None:
    """Raise ``TrainingDiverged`` if any rank's (local) parameters are not finite: called before a checkpoint."""
    bad = any(p.numel() and not bool(torch.isfinite(p.detach()).all()) for p in parameters)
    if _agreed(bad, device):
        raise TrainingDiverged(f"training diverged at step {step}: the weights are no longer finite; "
                               f"{_last_good(workdir)}; lower train.lr or set deepspeed.gradient_clipping")


def check_metrics(metrics: Mapping[str, float], step: int, workdir: Path, device: torch.device) -> None:
    """Raise ``TrainingDiverged`` (on every rank) if any rank's evaluation errors are not finite."""
    if _agreed(_non_finite(metrics), device):
        raise TrainingDiverged(f"training diverged at step {step}: non-finite evaluation ({_terms(metrics)}); "
                               f"{_last_good(workdir)}; lower train.lr or set deepspeed.gradient_clipping")
