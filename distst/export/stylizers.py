"""Stylising batches of frames with one style, the style side computed once: a torch model or exported graphs.

A clip has one style and many frames, so the style's encoder pass (and whatever the model derives from it:
AdaIN's statistics, SANet's relu4_1/relu5_1 features) runs once in ``set_style``, not once per frame. That is
the model's own cached-style pair (``distst.export.graphs.style_cache``), the one ``distst export`` cuts its
graphs at, so torch and ONNX stylise alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import registry
from ..models import DiststModel, StyleTransferModel
from .graphs import style_cache
from .runtime import OnnxStylizer


class FrameStylizer(ABC):
    """Stylises N x 3 x H x W frames in [0, 1] with the style given to ``set_style``.

    ``multiple`` and ``min_size`` are the size constraints frames (and the style) must be sized to. A stylizer of
    a model that translates a content image alone (``takes_style`` False: its record's ``inputs`` is "content")
    is called without ``set_style``.
    """

    multiple: int = 1
    min_size: int = 1
    takes_style: bool = True

    @abstractmethod
    def set_style(self, style: Tensor) -> None:
        """Take the style (1 x 3 x h x w in [0, 1]) for every following call."""

    @abstractmethod
    def __call__(self, frames: Tensor) -> Tensor:
        """N x 3 x H x W in [0, 1], cropped to the frames' size (on the stylizer's device; ONNX: CPU)."""


def _fit(output: Tensor, frames: Tensor) -> Tensor:
    # Models may round sizes up (ceil-mode pools) and do not clamp.
    h, w = frames.shape[-2:]
    return output[..., :h, :w].clamp(0, 1)


class TorchStylizer(FrameStylizer):
    """A distst model. A style-transfer model at alpha 1 runs its cached-style pair (the style's side once);
    at alpha < 1 the plain forward; a translation model (CycleGAN) its forward on the frames alone."""

    def __init__(self, model: DiststModel, alpha: float = 1.0, device: str | torch.device = "cpu") -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.alpha = alpha
        self.multiple, self.min_size = model.input_multiple, model.min_size
        self.takes_style = registry.model_record(model.name).inputs == "content_style"
        self.cache = style_cache(model) if isinstance(model, StyleTransferModel) and alpha == 1.0 else None
        self._style: Tensor | None = None
        self._cached: tuple[Tensor, ...] = ()
        self._expanded: dict[int, tuple[Tensor, ...]] = {}

    @torch.no_grad()
    def set_style(self, style: Tensor) -> None:
        style = style.to(self.device)
        self.model.check_input(style)
        self._style, self._expanded = style, {}
        if self.cache is not None:
            model = self.model
            self._cached = self.cache.from_style(model, model.encoder(style))  # type: ignore[arg-type]

    def _cached_for(self, n: int) -> tuple[Tensor, ...]:
        # contiguous: transforms reshape the style side with .view, which a stride-0 expand would refuse
        if n not in self._expanded:
            self._expanded[n] = tuple(t.expand(n, *t.shape[1:]).contiguous() for t in self._cached)
        return self._expanded[n]

    @torch.no_grad()
    def __call__(self, frames: Tensor) -> Tensor:
        if self._style is None and self.takes_style:
            raise RuntimeError("set_style first")
        frames = frames.to(self.device)
        model, n = self.model, len(frames)
        if not self.takes_style:
            return _fit(model(frames), frames)
        if self.cache is None:
            return _fit(model(frames, self._style.expand(n, -1, -1, -1), alpha=self.alpha), frames)
        model.check_input(frames)
        transformed = self.cache.transform(model, model.encoder(frames), self._cached_for(n))  # type: ignore[arg-type]
        return _fit(model.decoder(transformed), frames)  # type: ignore[operator]


class OnnxFrameStylizer(FrameStylizer):
    """The cached-style pair of a ``distst export`` directory in ONNX Runtime (CPU); the graphs take a batch
    of 1, so frames run one at a time. Size constraints from the manifest."""

    def __init__(self, export_dir: str | Path, variant: str = "fp32", threads: int | None = None) -> None:
        self.runner = OnnxStylizer(export_dir, variant, threads)
        self.multiple = int(self.runner.manifest["input_multiple"])
        self.min_size = int(self.runner.manifest["min_size"])
        self.takes_style = self.runner.takes_style
        self._cached: dict[str, np.ndarray] | None = None

    def set_style(self, style: Tensor) -> None:
        self._cached = self.runner.style_inputs(style)

    def __call__(self, frames: Tensor) -> Tensor:
        if not self.takes_style:  # a translation's export: its forward graph on the content alone
            return _fit(torch.cat([self.runner.forward(frame[None]) for frame in frames]), frames)
        if self._cached is None:
            raise RuntimeError("set_style first")
        cached = self._cached
        return _fit(torch.cat([self.runner.stylize_cached(frame[None], cached) for frame in frames]), frames)
