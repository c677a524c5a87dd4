"""What a style-transfer model's exported style side hands its content side (``distst export``'s cached-style
pair): each model declares its own (``StyleTransferModel.style_cache``), so export never asks for a name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from .stats import calc_mean_std, mean_variance_norm

if TYPE_CHECKING:  # annotations only: base.py imports this module
    from .base import StyleTransferModel


@dataclass(frozen=True)
class StyleCache:
    """What the style side hands the content side: named tensors, and how the content side uses them."""

    #: Names of the cached tensors, in graph-input order.
    names: tuple[str, ...]
    #: Encoder taps the cache is taken from (``relu4_1``...); ``stats`` caches their mean and std instead.
    taps: tuple[str, ...]
    stats: bool = False
    #: What the export manifest says the cached tensors are (empty: the statistics or the feature maps).
    kind: str = ""

    @classmethod
    def of_taps(cls, taps: tuple[str, ...]) -> StyleCache:
        """The style's features at ``taps``, named ``style_<tap>``."""
        return cls(tuple(f"style_{tap}" for tap in taps), taps)

    def from_style(self, model: StyleTransferModel, style_feats: list[Tensor]) -> tuple[Tensor, ...]:
        by_tap = dict(zip(model.encoder.tap_names, style_feats, strict=True))
        if self.stats:
            mean, std = calc_mean_std(by_tap[self.taps[0]])
            return mean, std
        return tuple(by_tap[tap] for tap in self.taps)

    def transform(self, model: StyleTransferModel, content_feats: list[Tensor], cached: tuple[Tensor, ...]) -> Tensor:
        if self.stats:  # AdaIN with the style's statistics given (stats.adain with calc_mean_std done already)
            mean, std = cached
            return mean_variance_norm(content_feats[-1]) * std + mean
        # Taps the cache leaves out are never read by this model's transform (its ``style_cache`` says so).
        style_feats = [dict(zip(self.taps, cached, strict=True)).get(tap) for tap in model.encoder.tap_names]
        return model.stylize_features(content_feats, style_feats, 1.0)  # type: ignore[arg-type]
