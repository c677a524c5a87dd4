"""The models: each registers itself (``@registry.model`` where it is defined); ``create`` constructs any of them
from its config section."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from .. import registry
from ..config import ModelSection
from ..weights import WeightsError, load_checked
from .adain import AdaIN, AdaINSection
from .base import DiststModel, FeatureRecorder, Stage, StyleTransferModel, StyleTransferSection
from .cyclegan import CycleGAN
from .mccnet import MCCNet
from .plan import Plan, PlanError
from .sanet import SANet, SANetSection
from .vgg import VGGEncoder, frozen_copy, init_encoder, random_features_init


def model_class(name: str) -> type[DiststModel]:
    """The registered class: its ``input_multiple``, ``min_size`` and plans are known without building it."""
    return registry.model_record(name).model_class


def available() -> list[str]:
    registry.load_builtins()
    return sorted(registry.MODELS)


registry.DEFAULTS.setdefault("model.name", AdaIN.name)


def create(section: ModelSection, weights: bool | Mapping[str, Tensor] = True, *, source: str = "state") -> DiststModel:
    """The one constructor: the model ``section`` names, built from its channel plan.

    ``weights=True``: fresh weights, with the local weight files the section names loaded strictly (a
    style-transfer model's ``model.encoder == 'frozen'``, the reference set-up, leaves its encoder without
    gradients). ``weights=False``: fresh weights without those files (a trainer about to load a model file's
    weights: a slimmed plan could not take the parts' reference files; the loss network is still made from
    ``vgg_weights``). A state dict: loaded strictly into the model as constructed (``source`` names it in errors).
    """
    model = model_class(section.name)(section)
    if isinstance(weights, Mapping):
        load_checked(model, weights, source)
    else:
        model.init_weights(files=weights)
    return model


def build(cfg: ModelSection, part_weights: bool = True) -> DiststModel:
    """Kept for callers not yet moved to ``create`` (same meaning: ``create(cfg, weights=part_weights)``)."""
    return create(cfg, weights=part_weights)


def param_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per group (all parameters, trainable or not), plus 'total'."""
    groups = model.groups() if isinstance(model, DiststModel) else {"model": model}
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in groups.items()}
    counts["total"] = sum(counts.values())
    return counts


__all__ = [
    "AdaIN", "AdaINSection", "CycleGAN", "DiststModel", "MCCNet", "FeatureRecorder", "Plan", "PlanError", "SANet", "SANetSection",
    "Stage", "StyleTransferModel", "StyleTransferSection", "VGGEncoder", "WeightsError", "available", "build",
    "create", "frozen_copy", "init_encoder", "model_class", "param_counts", "random_features_init",
]
