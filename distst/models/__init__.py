"""The model registry: one constructor for every style-transfer model, each encoder / transform / decoder."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..config import ModelConfig
from .adain import AdaIN
from .base import StyleTransferModel
from .sanet import SANet
from .vgg import VGGEncoder, frozen_copy
from .weights import WeightsError, load_checked, read_state_dict

_REGISTRY: dict[str, Callable[[float], StyleTransferModel]] = {}


def register(name: str, factory: Callable[[float], StyleTransferModel]) -> None:
    """Make a model buildable by name (``model.name`` in configs); the factory takes the width."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered already")
    _REGISTRY[name] = factory


def available() -> list[str]:
    return sorted(_REGISTRY)


register("adain", AdaIN)
register("sanet", SANet)


def build(cfg: ModelConfig) -> StyleTransferModel:
    """The model named by ``cfg.name`` at ``cfg.width``, with any local weight files loaded strictly.

    ``cfg.encoder == 'frozen'`` (the reference set-up) leaves the encoder without gradients.
    """
    if cfg.name not in _REGISTRY:
        raise ValueError(f"unknown model {cfg.name!r}; registered: {', '.join(available())}")
    model = _REGISTRY[cfg.name](cfg.width)
    if cfg.vgg_weights:
        model.encoder.load_reference(cfg.vgg_weights)
    for path, part in ((cfg.decoder_weights, model.decoder), (cfg.transform_weights, model.transform)):
        if path:
            load_checked(part, read_state_dict(path), path)
    model.encoder.requires_grad_(cfg.encoder == "trainable")
    return model


def param_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per group of a style-transfer model (all parameters, trainable or not), plus 'total'."""
    groups = model.groups() if isinstance(model, StyleTransferModel) else {"model": model}
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in groups.items()}
    counts["total"] = sum(counts.values())
    return counts


__all__ = [
    "AdaIN", "SANet", "StyleTransferModel", "VGGEncoder", "WeightsError", "available", "build", "frozen_copy",
    "param_counts", "register",
]
