"""The model registry: one constructor for every model, each with its config section, groups and plan."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .. import registry
from ..config import ModelSection
from .adain import AdaIN, AdaINSection
from .base import DiststModel, FeatureRecorder, Stage, StyleTransferModel, StyleTransferSection
from .cyclegan import CycleGAN
from .mccnet import MCCNet
from .plan import Plan, PlanError
from .sanet import SANet, SANetSection
from .vgg import VGGEncoder, frozen_copy
from .weights import WeightsError, load_checked, read_state_dict

_REGISTRY: dict[str, type[DiststModel]] = {}


def register(model: type[DiststModel]) -> None:
    """Make a model buildable by name (``model.name`` in configs) and its section known to the config tree."""
    if _REGISTRY.get(model.name, model) is not model:
        raise ValueError(f"model {model.name!r} is registered already")
    _REGISTRY[model.name] = model
    model.section.model_class = model
    registry.register_model_section(model.name, model.section)


def model_class(name: str) -> type[DiststModel]:
    """The registered class: its ``input_multiple``, ``min_size`` and plans are known without building it."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(available())}")
    return _REGISTRY[name]


def available() -> list[str]:
    return sorted(_REGISTRY)


register(AdaIN)
register(SANet)
register(MCCNet)
register(CycleGAN)
registry.DEFAULTS.setdefault("model.name", AdaIN.name)


def build(cfg: ModelSection, part_weights: bool = True) -> DiststModel:
    """The model ``cfg`` names, built from its channel plan, with any local weight files loaded strictly.

    A style-transfer model with ``encoder == 'frozen'`` (the reference set-up) leaves its encoder without
    gradients. ``cfg.init_from`` is not read here: ``train()`` loads it (``models.io``), and builds with
    ``part_weights=False``: the parts' reference files (which a slimmed plan could not take) are then not loaded
    into the model, while ``vgg_weights`` still makes its loss network.
    """
    model = model_class(cfg.name)(cfg)
    if isinstance(model, StyleTransferModel):
        assert isinstance(cfg, StyleTransferSection)
        init_encoder(model.encoder, cfg.vgg_weights if part_weights else None)
        model.encoder_source = cfg.vgg_weights if part_weights else None
        for path, part in ((cfg.decoder_weights, model.decoder), (cfg.transform_weights, model.transform)):
            if path and part_weights:
                # A part whose official files hold unused weights (MCCNet's h conv) drops them by name.
                load_checked(part, getattr(part, "reference_state", dict)(read_state_dict(path)), path)
        model.encoder.requires_grad_(cfg.encoder == "trainable")
    return model


def init_encoder(encoder: VGGEncoder, vgg_weights: str | Path | None) -> None:
    """Pretrained weights from a local ``vgg_normalised.pth``, else a He initialisation."""
    if vgg_weights:
        encoder.load_reference(vgg_weights)
    else:
        random_features_init(encoder)


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
    """Parameters per group (all parameters, trainable or not), plus 'total'."""
    groups = model.groups() if isinstance(model, DiststModel) else {"model": model}
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in groups.items()}
    counts["total"] = sum(counts.values())
    return counts


__all__ = [
    "AdaIN", "AdaINSection", "DiststModel", "FeatureRecorder", "Plan", "PlanError", "SANet", "SANetSection",
    "Stage", "StyleTransferModel", "StyleTransferSection", "VGGEncoder", "WeightsError", "available", "build",
    "frozen_copy", "init_encoder", "model_class", "param_counts", "register",
]
