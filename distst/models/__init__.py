"""The model registry: one constructor for every style-transfer model, each encoder / transform / decoder."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .adain import AdaIN
from .base import StyleTransferModel
from .sanet import SANet
from .vgg import VGGEncoder, frozen_copy
from .weights import WeightsError, load_checked, read_state_dict

_REGISTRY: dict[str, type[StyleTransferModel]] = {}


def register(name: str, model: type[StyleTransferModel]) -> None:
    """Make a model buildable by name (``model.name`` in configs); it is constructed with the width."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered already")
    _REGISTRY[name] = model


def model_class(name: str) -> type[StyleTransferModel]:
    """The registered class: its ``input_multiple`` and ``min_size`` are known without building it."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(available())}")
    return _REGISTRY[name]


def available() -> list[str]:
    return sorted(_REGISTRY)


register("adain", AdaIN)
register("sanet", SANet)


def build(cfg: ModelConfig) -> StyleTransferModel:
    """The model named by ``cfg.name`` at ``cfg.width``, with any local weight files loaded strictly.

    ``cfg.encoder == 'frozen'`` (the reference set-up) leaves the encoder without gradients.
    """
    model = model_class(cfg.name)(cfg.width)
    if cfg.vgg_weights:
        model.encoder.load_reference(cfg.vgg_weights)
    else:
        random_features_init(model.encoder)
    for path, part in ((cfg.decoder_weights, model.decoder), (cfg.transform_weights, model.transform)):
        if path:
            load_checked(part, read_state_dict(path), path)
    model.encoder.requires_grad_(cfg.encoder == "trainable")
    return model


def random_features_init(encoder: nn.Module) -> None:
    """He (fan-in, ReLU) init for an encoder without pretrained weights.

    PyTorch's default conv init shrinks activations about 3x per layer, so a random VGG's relu4_1 features
    vanish (content losses ~1e-9) and nothing useful is learnt; He init keeps their scale, and random VGG
    features are a known workable basis for style statistics. Only used when no ``vgg_weights`` are given.
    """
    for module in encoder.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)


def param_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per group of a style-transfer model (all parameters, trainable or not), plus 'total'."""
    groups = model.groups() if isinstance(model, StyleTransferModel) else {"model": model}
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in groups.items()}
    counts["total"] = sum(counts.values())
    return counts


__all__ = [
    "AdaIN", "SANet", "StyleTransferModel", "VGGEncoder", "WeightsError", "available", "build", "frozen_copy",
    "model_class", "param_counts", "register",
]
