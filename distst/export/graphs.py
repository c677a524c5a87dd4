"""The modules an ONNX graph is exported from: the whole forward, and the cached-style pair.

An app that stylises many photos with one style runs the style side once and keeps its result:
``StyleGraph`` maps a style image to the transform's style inputs, ``CachedStylizeGraph`` maps a content
image plus those inputs to the stylised image. What is cached is the model's own choice (its ``style_cache``):

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

A model that translates a content image alone (its record's ``inputs`` is "content": CycleGAN) has no style side:
``ContentGraph`` is its forward on the content, the one graph of its export.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..models import DiststModel, StyleTransferModel
from ..models.stylecache import StyleCache


def style_cache(model: StyleTransferModel) -> StyleCache:
    """The model's own cache (``style_cache``), else every encoder tap of the style."""
    return model.style_cache or StyleCache.of_taps(tuple(model.encoder.tap_names))


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


class ContentGraph(nn.Module):
    """content -> image: the forward of a model that takes a content image alone."""

    def __init__(self, model: DiststModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, content: Tensor) -> Tensor:
        return self.model(content)
