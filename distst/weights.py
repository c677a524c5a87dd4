"""Loading weight files safely (``weights_only=True``) with errors that name the mismatching keys.

A bottom floor: models, metrics (the Inception file) and the trainer read weights through it, so metrics need
not import models (which import metrics)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import DiststError


class WeightsError(DiststError, ValueError):
    """A weight or checkpoint file does not fit the module it is loaded into."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a local file, loaded with ``weights_only=True`` (no code execution)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file {path} does not exist (distst never downloads weights: give a local path)")
    if path.stat().st_size == 0:
        raise WeightsError(f"weight file {path} is empty (0 bytes): an interrupted copy or download?")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        reason = str(err) or type(err).__name__  # EOFError of a cut-off file has no message
        raise WeightsError(f"{path} is not a loadable weights file: {reason}") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return dict(state)


def mismatches(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> list[str]:
    """Human-readable differences between two state dicts: missing, unexpected, and shape mismatches."""
    problems = [f"missing key {k!r}" for k in expected if k not in given]
    problems += [f"unexpected key {k!r}" for k in given if k not in expected]
    problems += [
        f"shape of {k!r}: file has {tuple(given[k].shape)}, model expects {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and tuple(given[k].shape) != tuple(v.shape)
    ]
    return problems


def first_mismatch(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> str | None:
    """The first difference, in ``expected``'s order (a missing key or a wrong shape), else the first unexpected
    key of ``given``; None when they fit. One problem, so that a refusal stays one line."""
    for key, tensor in expected.items():
        if key not in given:
            return f"missing key {key!r} (expected shape {tuple(tensor.shape)})"
        if tuple(given[key].shape) != tuple(tensor.shape):
            return f"{key!r} has shape {tuple(given[key].shape)}, expected {tuple(tensor.shape)}"
    extra = next((key for key in given if key not in expected), None)
    return None if extra is None else f"unexpected key {extra!r} (shape {tuple(given[extra].shape)})"


def without_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """``state`` with ``prefix`` dropped when every key has it (a ``DataParallel`` module saved whole: ``module.``)."""
    if state and all(key.startswith(prefix) for key in state):
        return {key.removeprefix(prefix): value for key, value in state.items()}
    return dict(state)


def load_checked(module: nn.Module, state: Mapping[str, Tensor], source: str, shown: int = 5) -> None:
    """``module.load_state_dict(state, strict=True)``, but failing with the first mismatches named."""
    problems = mismatches(module.state_dict(), state)
    if problems:
        more = f" (and {len(problems) - shown} more)" if len(problems) > shown else ""
        raise WeightsError(
            f"{source} does not fit {type(module).__name__}: " + "; ".join(problems[:shown]) + more
        )
    module.load_state_dict(state, strict=True)
