"""The three channel-pruning methods: their config sections, their schedules of stages, their channel choices.

A method is a ``prune.method`` section that says which stages to run (``stages``): train stages (the dense
model, regularised "sparsify" training, fine-tuning) and prune stages that choose the channels to keep
(``select``) and slim the model physically. ``runner.ChannelSchedule`` turns them into the one driver's steps
(``distst.prune.schedule``). Channels are scored by importance objects (``importance``).

- ``l2`` (Agrawal & Kavi, mobile AdaIN): filter-L2 ranking of chosen encoder layers, the mirrored decoder layers
  cut to the same widths (by their own filter L2), in ``iterations`` steps with fine-tuning between.
- ``iccp`` (network slimming with a correlation regulariser): per-channel scales trained with L1 + correlation,
  each layer pruned by its own ranking at ``ratios[i]``, the encoder side then the decoder side, fine-tuned.
- ``cpst`` (channel and xor losses): trained so that the same relu4_1 channels are off for every image; the
  channels of least summed response on held-out images are removed from the encoder output (and the decoder's
  input, which is coupled to it).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor

from ... import registry
from ...config import Config, MethodSection
from ...models import DiststModel
from ...train import Method
from .importance import FilterNorm, Importance, ResponseNorm, ScaleMagnitude
from .regularisers import SCALES_FILE, ChannelScales, CpstLosses
from .surgery import ChannelGraph, LayerKey, Selection


@dataclass
class PruneInputs:
    """What a prune stage's channel choice sees."""

    cfg: Config
    model: DiststModel
    #: The last train stage's directory (its ``scales.pt``, for ICCP).
    trained_dir: Path
    #: Widths of the dense model (the first stage's), by group and layer.
    dense_widths: dict[str, dict[str, int]]
    #: Held-out images (content and style) for response-based choices.
    images: Callable[[], Tensor]
    #: The model's dependency graph, traced once per prune step (``graph()`` traces it when not given).
    traced: ChannelGraph | None = None

    def graph(self) -> ChannelGraph:
        if self.traced is None:
            self.traced = ChannelGraph(self.model)
        return self.traced


@dataclass
class TrainStage:
    name: str
    steps: int
    #: The method that trains in this stage (given the stage directory), or None for plain training.
    method: Callable[[Path], Method] | None = None


@dataclass
class PruneStage:
    name: str
    select: Callable[[PruneInputs], Selection]


Stage = TrainStage | PruneStage


#: How every channel-pruning method registers (``@channel_method`` on its section): run by ``distst prune``; the
#: encoder is pruned, so it is trained ("plus" set-up with a separate frozen loss VGG); ZeRO-3 is refused, as the
#: scales are folded into the convs in place (``ChannelScales.on_train_end``).
channel_method = registry.method(command="prune", needs_full_parameters=True, trains_encoder=True)


class ChannelSection(MethodSection):
    """Keys every channel-pruning method has."""

    finetune_steps: int = Field(100, ge=0, description="fine-tuning steps after each pruning step")
    min_channels: int = Field(4, ge=1, description="floor on the channels any pruned layer keeps")

    @abstractmethod
    def stages(self, cfg: Config) -> list[Stage]:
        """The stages to run, in order; the first trains the dense model."""

    @abstractmethod
    def scope(self, cfg: Config) -> list[LayerKey]:
        """The channel layers this method prunes (as configured; coupled layers follow them)."""

    def check_layers(self, cfg: Config, layers: list[str], group: str, key: str) -> None:
        valid = list(type(cfg.model).model_class.resolve_plan(cfg.model).get(group, {}))
        unknown = [layer for layer in layers if layer not in valid]
        if unknown:
            raise ValueError(f"prune.{key}: {cfg.model.name} has no {group} layer(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(valid)}")


def kept_count(width: int, keep_fraction: float, floor: int) -> int:
    """Channels a layer of ``width`` keeps: round(width * keep_fraction), at least ``floor`` (and at most width)."""
    return min(width, max(floor, int(round(width * keep_fraction))))


def top_channels(scores: Tensor, count: int) -> list[int]:
    """Indices of the ``count`` highest scores, ascending (ties: the lower index)."""
    order = torch.argsort(-scores, stable=True)[:count]
    return sorted(order.tolist())


def select_by_importance(inputs: PruneInputs, importance: Importance, layers: list[LayerKey],
                         keep: Callable[[LayerKey, int], int]) -> Selection:
    """Keep the highest-scoring channels of each coupled set touching ``layers`` (member scores summed)."""
    scores = importance(inputs.model, layers)
    selection: Selection = {}
    for leader, members in inputs.graph().leaders(set(scores)).items():
        total = sum(scores[m] for m in members if m in scores)
        selection.setdefault(leader[0], {})[leader[1]] = top_channels(total, keep(leader, len(total)))
    return selection


# --- l2 ------------------------------------------------------------------------------------------

@channel_method
class L2Section(ChannelSection):
    """``prune.*`` for filter-L2 pruning of mirrored encoder/decoder layers (Agrawal & Kavi)."""

    method: Literal["l2"] = "l2"
    layers: list[str] = Field(["conv3_1", "conv3_2", "conv3_3", "conv3_4", "conv4_1"],
                              description="encoder layers pruned (early layers are kept)")
    ratio: float = Field(0.4, gt=0, lt=1, description="fraction of each layer's channels removed in all")
    layer_ratios: dict[str, float] = Field({}, description="per-layer totals that override ratio")
    iterations: int = Field(4, ge=1, description="pruning steps the totals are reached in")
    mirror: bool = Field(True, description="cut the decoder layers of the same names to the same widths")

    @field_validator("layer_ratios")
    @classmethod
    def _ratios_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0 < v < 1}
        if bad:
            raise ValueError(f"ratios must lie in (0, 1): {bad}")
        return value

    def resolve(self, cfg: Config) -> None:
        self.check_layers(cfg, self.layers, "encoder", "layers")
        self.check_layers(cfg, list(self.layer_ratios), "encoder", "layer_ratios")

    def scope(self, cfg: Config) -> list[LayerKey]:
        decoder = type(cfg.model).model_class.resolve_plan(cfg.model).get("decoder", {}) if self.mirror else {}
        return [("encoder", name) for name in self.layers] + [("decoder", name) for name in self.layers
                                                               if name in decoder]

    def total_ratio(self, layer: str) -> float:
        return self.layer_ratios.get(layer, self.ratio)

    def stages(self, cfg: Config) -> list[Stage]:
        stages: list[Stage] = [TrainStage("dense", cfg.train.steps)]
        for it in range(1, self.iterations + 1):
            stages += [PruneStage(f"prune_{it}", lambda inputs, it=it: self.select(inputs, it)),
                       TrainStage(f"finetune_{it}", self.finetune_steps)]
        return stages

    def select(self, inputs: PruneInputs, iteration: int) -> Selection:
        """Widths after ``iteration`` of ``iterations``: dense * (1 - total)^(iteration / iterations)."""
        model, dense = inputs.model, inputs.dense_widths
        layers = model.channel_layers()

        def keep(key: LayerKey, width: int) -> int:
            fraction = (1.0 - self.total_ratio(key[1])) ** (iteration / self.iterations)
            return min(width, kept_count(dense[key[0]][key[1]], fraction, self.min_channels))

        selection = select_by_importance(inputs, FilterNorm(p=2), [("encoder", name) for name in self.layers], keep)
        if self.mirror:
            mirrored = [("decoder", name) for name in self.layers if name in layers.get("decoder", {})]
            widths = {name: len(kept) for name, kept in selection.get("encoder", {}).items()}
            selection.update(select_by_importance(inputs, FilterNorm(p=2), mirrored,
                                                  lambda key, width: min(width, widths[key[1]])))
        return selection


# --- iccp ----------------------------------------------------------------------------------------

@channel_method
class IccpSection(ChannelSection):
    """``prune.*`` for ICCP: slimming scales, L1 + correlation regularisers, alternate encoder/decoder pruning."""

    method: Literal["iccp"] = "iccp"
    lam: float = Field(1e-4, ge=0, description="weight of the L1 penalty on the channel scales")
    eta: float = Field(1e-7, ge=0, description="weight of the correlation regulariser")
    ratios: list[float] = Field([0.3, 0.857], min_length=1,
                                description="fraction of each layer's channels pruned per iteration "
                                            "(total 1 - prod(1 - r))")
    sides: list[Literal["encoder", "decoder"]] = Field(["encoder", "decoder"], min_length=1,
                                                       description="the sides pruned in turn, in order")
    sparsify_steps: int | None = Field(None, ge=1, description="regularised steps before each pruning "
                                                               "(default train.steps)")

    @field_validator("ratios")
    @classmethod
    def _ratios_in_range(cls, value: list[float]) -> list[float]:
        if any(not 0 < r < 1 for r in value):
            raise ValueError(f"every ratio must lie in (0, 1), got {value}")
        return value

    def stages(self, cfg: Config) -> list[Stage]:
        stages: list[Stage] = [TrainStage("dense", cfg.train.steps)]
        sparsify = self.sparsify_steps or cfg.train.steps
        for i, ratio in enumerate(self.ratios, start=1):
            for side in self.sides:
                stages += [
                    TrainStage(f"sparsify_{i}_{side}", sparsify, lambda d, side=side: self.regulariser(cfg, side, d)),
                    PruneStage(f"prune_{i}_{side}", lambda inputs, side=side, r=ratio: self.select(inputs, side, r)),
                    TrainStage(f"finetune_{i}_{side}", self.finetune_steps),
                ]
        return stages

    def scope(self, cfg: Config) -> list[LayerKey]:
        plan = type(cfg.model).model_class.resolve_plan(cfg.model)
        return [(side, name) for side in self.sides for name in plan.get(side, {})]

    def regulariser(self, cfg: Config, side: str, stage_dir: Path) -> ChannelScales:
        return ChannelScales([key for key in self.scope(cfg) if key[0] == side], self.lam, self.eta, stage_dir)

    def select(self, inputs: PruneInputs, side: str, ratio: float) -> Selection:
        layers = [(side, name) for name in inputs.model.channel_layers()[side]]
        return select_by_importance(inputs, ScaleMagnitude(inputs.trained_dir / SCALES_FILE), layers,
                                    lambda key, width: kept_count(width, 1.0 - ratio, self.min_channels))


# --- cpst ----------------------------------------------------------------------------------------

@channel_method
class CpstSection(ChannelSection):
    """``prune.*`` for CPST: channel and xor losses on relu4_1, then removal of the least-used channels."""

    method: Literal["cpst"] = "cpst"
    channel_weight: float = Field(1e4, ge=0, description="weight of the channel (soft l0) loss")
    xor_weight: float = Field(500.0, ge=0, description="weight of the xor loss")
    decorrelation_weight: float = Field(0.0, ge=0, description="weight of the optional decorrelation loss")
    ratio: float = Field(0.5, gt=0, lt=1, description="fraction of the relu4_1 channels removed")

    def scope(self, cfg: Config) -> list[LayerKey]:
        return [("encoder", "conv4_1")]

    def stages(self, cfg: Config) -> list[Stage]:
        losses = CpstLosses(self.channel_weight, self.xor_weight, self.decorrelation_weight)
        return [TrainStage("dense", cfg.train.steps), TrainStage("sparsify", cfg.train.steps, lambda _d: losses),
                PruneStage("prune", self.select), TrainStage("finetune", self.finetune_steps)]

    def select(self, inputs: PruneInputs) -> Selection:
        """Rank channels by their summed response L2 over the held-out images (content and style)."""
        return select_by_importance(inputs, ResponseNorm(inputs.images(), "relu4_1"), self.scope(inputs.cfg),
                                    lambda key, width: kept_count(width, 1.0 - self.ratio, self.min_channels))

