"""distst model files: the model's config and its state dict in one ``weights_only``-loadable file."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import atomic
from ..config import ModelConfig
from .base import StyleTransferModel
from .weights import WeightsError, load_checked

FORMAT = "distst-model/1"


def save_model(model: StyleTransferModel, cfg: ModelConfig, path: str | Path) -> Path:
    """Write ``path`` atomically: ``{'format', 'model': config (no weight paths), 'state_dict'}``."""
    record = cfg.model_dump(mode="json", exclude={"vgg_weights", "decoder_weights", "transform_weights"})
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return atomic.torch_save({"format": FORMAT, "model": record, "state_dict": state}, path)


def load_model(path: str | Path) -> tuple[StyleTransferModel, ModelConfig]:
    """A model and its config from a distst model file (or a run directory holding ``model.pt``)."""
    from . import build  # the registry imports this module's siblings; import late to avoid a cycle

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise WeightsError(f"model file {path} does not exist")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a distst model file (expected format {FORMAT!r}); "
                           "for reference .pth files use --vgg/--decoder/--transform")
    cfg = ModelConfig(**blob["model"])
    model = build(cfg)
    load_checked(model, blob["state_dict"], str(path))
    return model, cfg
