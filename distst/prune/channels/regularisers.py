"""The channel methods' training terms, as plain functions (checked against hand computations) and as the
``Method`` hooks that add them to the one training loop.

- Network slimming (ICCP): a learnable scale per output channel after each chosen conv, an L1 penalty on the
  scales and ICCP's correlation regulariser on the scaled features; the scales are folded into the convs at the
  end of training, so ``model.pt`` keeps the plain layout, and saved (``scales.pt``) for the pruning step.
- CPST: channel and xor losses on the relu4_1 features of content and style, which switch the same channels off
  for every image, and an optional decorrelation loss.

Every term is computed in fp32 whatever the training precision: in bf16 ``n / (n + 1e-5)`` rounds to 1 and
CPST's gradients vanish, and ICCP's sums over C x C correlations lose their small terms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ... import atomic
from ...config import Config
from ...masters import fp32_master
from ...models import DiststModel
from ...train import Method, StepInputs, TrainContext

SCALES_FILE = "scales.pt"
_SCALE = "channel_scale"  # the parameter added to each scaled conv


def slimming_l1(scales: list[Tensor]) -> Tensor:
    """Sum of |s| over every channel scale."""
    return sum(s.float().abs().sum() for s in scales)


def correlation_penalty(features: Tensor) -> Tensor:
    """ICCP's term for one layer's features F (B x C x H x W): S = F F^T per image (C x C over H*W), its L1
    norm, averaged over the batch."""
    flat = features.float().flatten(2)
    return torch.bmm(flat, flat.transpose(1, 2)).abs().sum() / features.shape[0]


def channel_activity(features: Tensor, eps: float = 1e-5) -> Tensor:
    """CPST's soft l0 per image and channel: ||F_bc|| / (||F_bc|| + eps), in [0, 1) (B x C). Written as
    1 - eps / (n + eps): the same value, but its gradient eps / (n + eps)^2 comes without the cancellation of
    n / (n + eps)'s (about 10% off in fp32 for n ~ 20, and exactly 0 in bf16)."""
    norms = features.float().flatten(2).norm(dim=2)
    return 1.0 - eps / (norms + eps)


def channel_loss(activity: Tensor) -> Tensor:
    """Mean soft l0: pushes channels off."""
    return activity.mean()


def xor_loss(activity: Tensor) -> Tensor:
    """Mean over image pairs i < j and channels of |l0_ic - l0_jc|: a channel is on or off for every image."""
    n = activity.shape[0]
    if n < 2:
        return activity.sum() * 0.0
    i, j = torch.triu_indices(n, n, offset=1)
    return (activity[i] - activity[j]).abs().mean()


def decorrelation_loss(features: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean |off-diagonal| of the channels' correlation matrix (per image, over H*W)."""
    flat = features.float().flatten(2)
    flat = flat - flat.mean(dim=2, keepdim=True)
    flat = flat / (flat.norm(dim=2, keepdim=True) + eps)
    corr = torch.bmm(flat, flat.transpose(1, 2))
    c = corr.shape[-1]
    off = corr.masked_select(~torch.eye(c, dtype=torch.bool, device=corr.device).expand_as(corr))
    return off.abs().mean() if c > 1 else corr.sum() * 0.0


def _scale_output(module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
    return output * getattr(module, _SCALE).view(1, -1, 1, 1)


class ChannelScales(Method):
    """ICCP's gates: ``s`` (initialised to 1) scales each output channel of the chosen convs; the loss adds
    ``lam * L1(s)`` and ``eta * correlation`` of the scaled features. ``layers`` are (group, layer) keys of
    ``model.channel_layers()``."""

    def __init__(self, layers: list[tuple[str, str]], lam: float, eta: float, out_dir: Path) -> None:
        self.layers, self.lam, self.eta, self.out_dir = layers, lam, eta, out_dir
        self._modules: dict[tuple[str, str], nn.Module] = {}
        self._paths: dict[tuple[str, str], str] = {}
        self._hooks: list[Any] = []

    def prepare_model(self, model: DiststModel, cfg: Config) -> None:
        paths = {id(m): name for name, m in model.named_modules()}
        channel_layers = model.channel_layers()
        for group, name in self.layers:
            conv = channel_layers[group][name]
            conv.register_parameter(_SCALE, nn.Parameter(torch.ones(conv.weight.shape[0])))
            self._hooks.append(conv.register_forward_hook(_scale_output))
            self._modules[(group, name)] = conv
            self._paths[(group, name)] = paths[id(conv)]

    def feature_requests(self) -> set[str]:
        return {f"module:{path}" for path in self._paths.values()} if self.eta else set()

    def scales(self) -> dict[str, Tensor]:
        return {f"{g}.{n}": getattr(m, _SCALE) for (g, n), m in self._modules.items()}

    def extra_losses(self, ctx: TrainContext, inputs: StepInputs) -> dict[str, Tensor]:
        losses = {"slimming_l1": self.lam * slimming_l1(list(self.scales().values()))}
        if self.eta:
            corr = sum(correlation_penalty(f) for path in self._paths.values()
                       for f in inputs.features.get(f"module:{path}", []))
            losses["correlation"] = self.eta * corr
        return losses

    def on_evaluate(self, ctx: TrainContext, metrics: dict[str, float]) -> None:
        # The optimizer's fp32 values: in bf16 the module's scales round to 1.0 near 1 (collective under ZeRO).
        values = torch.cat([fp32_master(s).abs().flatten() for s in self.scales().values()])
        metrics["scales/mean_abs"] = float(values.mean())
        metrics["scales/below_0.01"] = float((values < 0.01).float().mean())

    @torch.no_grad()
    def on_train_end(self, ctx: TrainContext) -> None:
        """Save the scales for the pruning step, then fold them into the convs: s * (W x + b) = (s W) x + s b.
        The loop has put the fp32 masters into the model first: the scales saved and folded are the trained
        ones, not their bf16 rounding (which near 1.0 is coarser than Adam's steps)."""
        if ctx.dist.is_main:
            atomic.torch_save({k: v.detach().cpu().clone() for k, v in self.scales().items()},
                              self.out_dir / SCALES_FILE)
        for conv in self._modules.values():
            scale = getattr(conv, _SCALE).detach()
            conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))
            if conv.bias is not None:
                conv.bias.mul_(scale)
            del conv._parameters[_SCALE]
        for handle in self._hooks:
            handle.remove()


class CpstLosses(Method):
    """CPST's channel, xor and (optional) decorrelation losses on relu4_1 of content and style."""

    FEATURES = ("content/relu4_1", "style/relu4_1")

    def __init__(self, channel_weight: float, xor_weight: float, decorrelation_weight: float) -> None:
        self.weights = {"channel": channel_weight, "xor": xor_weight, "decorrelation": decorrelation_weight}

    def feature_requests(self) -> set[str]:
        return set(self.FEATURES)

    def extra_losses(self, ctx: TrainContext, inputs: StepInputs) -> dict[str, Tensor]:
        feats = [f for name in self.FEATURES for f in inputs.features.get(name, [])]
        if not feats:
            raise RuntimeError(f"{ctx.model.name} recorded none of {self.FEATURES}: CPST needs its relu4_1 features")
        features = torch.cat(feats)
        activity = channel_activity(features)
        terms = {"channel": channel_loss(activity), "xor": xor_loss(activity)}
        if self.weights["decorrelation"]:
            terms["decorrelation"] = decorrelation_loss(features)
        return {f"cpst_{k}": self.weights[k] * v for k, v in terms.items()}
