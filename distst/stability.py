"""The temporal losses of the field as a ``Method`` any style-transfer model's training can add (``temporal.*``).

- Noise stability (MCCNet): the MSE between the output for the content and for the content plus Gaussian noise
  (its std drawn once per batch from ``temporal.noise_std``). MCCNet's own ``noise`` loss term is the same
  function (``stability.noise_stability``), so the option and the model's reference term cannot drift apart.
- Compound regularisation (ReReVST, Wang et al. 2020): warp the content by a random smooth flow plus a random
  global shift, add small noise, and penalise (L1) the difference between the warped output and the output of
  the warped content: the stylisation must commute with small motions, what a stable video needs.

Both run the model's own forward again on the perturbed content (the style's features are recomputed: the
price of needing nothing per model) with the feature recorder paused, so no method sees these passes. Random
numbers come from torch's RNG, which every checkpoint holds per rank: a resumed run draws the same ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import Config, ConfigError, TemporalConfig
from .models import DiststModel, StyleTransferModel
from .train.hooks import Method, MethodList, StepInputs, TrainContext
from .video.stability import compound_regularisation, noise_stability, random_motion


class TemporalLosses(Method):
    """The stability losses ``temporal.noise_weight`` and ``temporal.compound_weight`` switch on."""

    def __init__(self, settings: TemporalConfig) -> None:
        self.settings = settings
        self.name = "temporal"

    def prepare_model(self, model: DiststModel, cfg: Config) -> None:
        if not isinstance(model, StyleTransferModel):
            raise ConfigError(f"temporal.noise_weight / temporal.compound_weight: {model.name} is not a style-transfer "
                              "model (content, style -> image); the temporal losses need one")
        own = model.loss_weights().get("noise", 0.0)
        if own > 0 and self.settings.noise_weight > 0:
            raise ConfigError(f"temporal.noise_weight: {model.name} has its own noise-stability term "
                              f"(model.noise_weight={own:g}, the reference); set one of the two to 0")

    def feature_requests(self) -> set[str]:
        return {"output"}

    def extra_losses(self, ctx: TrainContext, inputs: StepInputs) -> dict[str, Tensor]:
        outputs = inputs.features.get("output", [])
        if not outputs or not outputs[0].requires_grad:
            return {}
        content, style = inputs.batch[:2]
        output = outputs[0]
        model = ctx.model

        def stylize(images: Tensor) -> Tensor:
            with model.features.paused():
                return model(images, style)

        s = self.settings
        losses: dict[str, Tensor] = {}
        if s.noise_weight > 0:
            losses["temporal/noise"] = s.noise_weight * noise_stability(stylize, content, output, s.noise_std)
        if s.compound_weight > 0:
            flow = random_motion(content, s.compound_motion, s.compound_shift)
            std = s.compound_noise * (1 + torch.rand((), device=content.device))  # in [s, 2s], as ReReVST
            noise = std * torch.randn_like(content)
            losses["temporal/compound"] = s.compound_weight * compound_regularisation(stylize, content, output, flow,
                                                                                      noise)
        return losses


def with_temporal_losses(method: Method | None, cfg: Config) -> Method | None:
    """``method`` with the temporal losses beside it when ``temporal.*`` turns one on."""
    if not cfg.temporal.trains:
        return method
    temporal = TemporalLosses(cfg.temporal)
    return temporal if method is None else MethodList([method, temporal])
