"""distst model files: the model's config section, channel plan and state dict in one ``weights_only`` file.

Format 2 adds the plan, so a physically slimmed model loads, stylises and trains further with no extra
flags; format 1 files (uniform width, no plan) still load. A trainer's file also records the step it is the model
of (``step``): a run directory's ``model.pt`` older than the run's newest checkpoint is refused
(``distst.outputs``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import atomic, outputs, registry
from ..config import ConfigError, ModelSection, model_section
from ..weights import WeightsError
from . import create
from .base import DiststModel

FORMAT = "distst-model/2"
READABLE = ("distst-model/1", FORMAT)
# Where weights came from is not part of a model file: the file is the weights (a model's record names its
# weight-file keys).
_NOT_SAVED_EVER = {"init_from"}
# Where a published (non-distst) file goes instead: each model's weight keys, never a model-file argument.
_REFERENCE_FILES = ("a published model's own files go in its weight keys instead: stylize's --vgg/--decoder/"
                    "--transform or --weights KEY=FILE, a job's model.<key>=FILE (e.g. model.vgg_weights, "
                    "model.generator_weights for CycleGAN; every model's keys: docs/install.md)")


def save_model(model: DiststModel, path: str | Path, state: dict[str, torch.Tensor] | None = None,
               step: int | None = None) -> Path:
    """Write ``path`` atomically: ``{'format', 'model': section (with the full plan), 'state_dict'}``; the state
    is ``model``'s own unless given (a trainer passes the fp32 masters), and ``step`` the training step it is of."""
    exclude = _NOT_SAVED_EVER | set(registry.model_record(model.name).weight_keys)
    record = model.cfg.model_dump(mode="json", exclude=exclude)
    record["plan"] = model.plan
    state = {k: v.detach().cpu().clone() for k, v in (model.state_dict() if state is None else state).items()}
    blob: dict[str, Any] = {"format": FORMAT, "model": record, "state_dict": state}
    if step is not None:
        blob["step"] = step
    return atomic.torch_save(blob, path)


def read_model_file(path: str | Path) -> tuple[ModelSection, dict[str, torch.Tensor]]:
    """The section (with its plan) and state dict of a distst model file or a run directory's ``model.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise WeightsError(f"model file {path} does not exist")
    try:
        blob: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for truncated or foreign files
        raise WeightsError(f"{path} is not a readable distst model file ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else 'empty or truncated'})") from None
    if not isinstance(blob, dict) or blob.get("format") not in READABLE:
        raise WeightsError(f"{path} is not a distst model file (expected format {FORMAT!r}); {_REFERENCE_FILES}")
    outputs.check(path, outputs.model_step(blob, path))  # never the model of an old finish beside newer checkpoints
    try:
        section = model_section(**blob["model"])
    except ConfigError as err:
        raise WeightsError(f"{path}: {err}") from None
    bad = _first_non_finite(blob["state_dict"])
    if bad is not None:  # a diverged run's weights: they would stylise to a black image
        raise WeightsError(f"{path}: {bad} holds NaN or infinite values (weights of a diverged run); "
                           "refusing to use it")
    return section, blob["state_dict"]


def _first_non_finite(state: Any) -> str | None:
    """The name of the first floating-point tensor of ``state`` with a NaN or infinite value."""
    for name, value in state.items() if isinstance(state, dict) else ():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def load_model(path: str | Path, **overrides: Any) -> tuple[DiststModel, ModelSection]:
    """A model and its section from a distst model file (or a run directory holding ``model.pt``)."""
    section, state = read_model_file(path)
    if overrides:
        section = section.model_copy(update=overrides)
    return create(section, weights=state, source=str(path)), section
