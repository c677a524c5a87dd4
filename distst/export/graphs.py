"""The modules an ONNX graph is exported from: the whole forward, and the cached-style pair.

An app that stylises many photos with one style runs the style side once and keeps its result:
``StyleGraph`` maps a style image to the transform's style inputs, ``CachedStylizeGraph`` maps a content
image plus those inputs to the stylised image. What is cached is chosen per model (``STYLE_CACHES``):

- AdaIN: the per-channel mean and std of the style's relu4_1 features (2 x C numbers, independent of the
  style image's size): the transform needs nothing else.
- SANet: the style's relu4_1 and relu5_1 features. The attention's key/value projections (1x1 convs) stay
  in the content graph: they are under a tenth of the style side's MACs (the VGG to relu5_1 is the rest), and
  keeping them there keeps one definition of the attention (the model's own module).
- MCCNet: the style's relu4_1 features, for the same reason (its ``g`` conv, FC_S and ``fc`` are a small part
  of the style side; caching their K-vector output would need the module split into a style half and a
  content half).
- any other encoder/transform/decoder model: every encoder tap of the style (its ``stylize_features`` sees
  exactly what the full forward gives it).

The wrapper calls the model's own parts (encoder, ``stylize_features``, decoder), so an exported graph is the
model's forward at alpha 1, minus the input checks (Python-side guards; the manifest states the constraints).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..models import StyleTransferModel
from ..models.stats import calc_mean_std, mean_variance_norm


@dataclass(frozen=True)
class StyleCache:
    """What the style side hands the content side: named tensors, and how the content side uses them."""

    #: Names of the cached tensors, in graph-input order.
    names: tuple[str, ...]
    #: Encoder taps the cache is taken from (``relu4_1``...); ``stats`` caches their mean and std instead.
    taps: tuple[str, ...]
    stats: bool = False

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
        # Taps the cache leaves out are never read by this model's transform (see STYLE_CACHES).
        style_feats = [dict(zip(self.taps, cached, strict=True)).get(tap) for tap in model.encoder.tap_names]
        return model.stylize_features(content_feats, style_feats, 1.0)  # type: ignore[arg-type]


STYLE_CACHES: dict[str, StyleCache] = {
    "adain": StyleCache(("style_mean", "style_std"), ("relu4_1",), stats=True),
    "sanet": StyleCache(("style_relu4_1", "style_relu5_1"), ("relu4_1", "relu5_1")),
    "mccnet": StyleCache(("style_relu4_1",), ("relu4_1",)),
}


def style_cache(model: StyleTransferModel) -> StyleCache:
    """The model's registered cache, else every encoder tap of the style."""
    found = STYLE_CACHES.get(model.name)
    if found is not None:
        return found
    taps = tuple(model.encoder.tap_names)
    return StyleCache(tuple(f"style_{tap}" for tap in taps), taps)


class CombinedGraph(nn.Module):
    """content, style -> image and the cached style inputs: the one module traced for export.

    The three graphs are cut out of its ONNX graph (``onnx.utils.Extractor``): ``style`` -> cached, content +
    cached -> image, content + style -> image. One trace instead of three (export takes seconds per trace),
    and the pair shares the single graph's nodes and weights by construction.
    """

    def __init__(self, model: StyleTransferModel, cache: StyleCache) -> None:
        super().__init__()
        self.model, self.cache = model, cache

    def forward(self, content: Tensor, style: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        cached = self.cache.from_style(m, m.encoder(style))
        return (m.decoder(self.cache.transform(m, m.encoder(content), cached)), *cached)
