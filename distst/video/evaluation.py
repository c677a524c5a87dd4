"""The temporal error every evaluation reports beside E (``temporal.*``): Lai et al.'s warping error of a model's
outputs on clips with known flow, each clip stylised with one held-out style image.

- ``temporal_error`` / ``temporal_l1``: the fixed synthetic clip set (``clips.synthetic_clips``: exact flow, no
  data needed), so every run, model and method is measured on the same frames;
- ``user_clips/temporal_error`` / ``user_clips/temporal_l1``: a user's clips with flow files (``temporal.clips``).

Clip ``i`` is stylised with held-out style ``i mod n``. The metric draws no random numbers: training stays
bitwise what it was without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ConfigError, TemporalConfig
from ..errors import DataError
from . import USER_PREFIX
from .clips import FlowClip, load_flow_clip, synthetic_clips
from .flow import in_bounds_mask
from .temporal import temporal_errors

Forward = Callable[[Tensor, Tensor], Tensor]


def fitted_size(size: int, multiple: int, min_size: int) -> int:
    """``size`` rounded down to the model's multiple, at least its minimum."""
    multiple = max(1, multiple)
    return max(-(-min_size // multiple) * multiple, size // multiple * multiple)


def read_user_clip(path: str | Path, multiple: int, min_size: int) -> FlowClip:
    """A user's clip directory: ``frames/`` (numbered images) and ``flow/`` (``.flo``/``.npy``, Sintel layout), with
    optional ``masks/`` (white = valid) or ``occlusions/`` (Sintel: white = occluded) and ``flow_backward/``.
    Frames keep their size so the flow files fit them, then clip and flow are cropped (top left: the flow's
    values hold) to the model's multiple."""
    from .io import read_clip

    root = Path(path)
    if not (root / "frames").is_dir() or not (root / "flow").is_dir():
        raise ConfigError(f"temporal.clips: {root} needs frames/ and flow/ directories (see docs/video.md)")
    frames, _ = read_clip(root / "frames", 0, 1, min_size)
    masks, occluded_is_white = (root / "masks", False) if (root / "masks").is_dir() else (root / "occlusions", True)
    backward = root / "flow_backward"
    clip = load_flow_clip(frames, root / "flow", mask_dir=masks if masks.is_dir() else None,
                          backward_dir=backward if backward.is_dir() else None, name=root.name,
                          occluded_is_white=occluded_is_white)
    h, w = (side // max(1, multiple) * max(1, multiple) for side in clip.frames.shape[-2:])
    flows = clip.flows[..., :h, :w]
    # A pixel whose match fell in the cropped-off strip is no longer matched.
    masks = clip.masks[..., :h, :w] * in_bounds_mask(flows)
    return FlowClip(clip.frames[..., :h, :w], flows, masks, clip.name)


@dataclass
class TemporalEvaluation:
    """The clips one run is measured on, built once."""

    synthetic: list[FlowClip]
    user: list[FlowClip]

    @classmethod
    def from_config(cls, settings: TemporalConfig, held_out_size: int, multiple: int, min_size: int
                    ) -> TemporalEvaluation:
        size = fitted_size(settings.eval_size or held_out_size, multiple, min_size)
        synthetic = synthetic_clips(settings.eval_clips, settings.eval_frames, size) if settings.eval_clips else []
        try:
            user = [read_user_clip(p, multiple, min_size) for p in settings.clips]
        except DataError as err:
            raise ConfigError(f"temporal.clips: {err}") from None
        return cls(synthetic, user)

    def __bool__(self) -> bool:
        return bool(self.synthetic or self.user)

    def to(self, device: torch.device | str) -> TemporalEvaluation:
        move = [FlowClip(c.frames.to(device), c.flows.to(device), c.masks.to(device), c.name)
                for c in (*self.synthetic, *self.user)]
        return TemporalEvaluation(move[: len(self.synthetic)], move[len(self.synthetic):])

    @torch.no_grad()
    def __call__(self, forward: Forward | nn.Module, styles: Tensor, batch_size: int = 8) -> dict[str, float]:
        """The temporal errors of ``forward(frames, style_batch)`` (a model, or an exported graph's stand-in)."""
        module = forward if isinstance(forward, nn.Module) else None
        was_training = module.training if module is not None else False
        if module is not None:
            module.eval()
        out: dict[str, float] = {}
        for prefix, clips in (("", self.synthetic), (USER_PREFIX, self.user)):
            per_clip = [self._clip(forward, clip, styles[i % len(styles)], batch_size) for i, clip in enumerate(clips)]
            for key, name in (("temporal_error", "temporal_error"), ("temporal_l1", "temporal_l1"),
                              ("output_std", "temporal_output_std")):
                if per_clip:
                    out[prefix + name] = sum(r[key] for r in per_clip) / len(per_clip)
        if module is not None:
            module.train(was_training)
        return out

    @staticmethod
    def _clip(forward: Forward, clip: FlowClip, style: Tensor, batch_size: int) -> dict[str, float]:
        style = style.unsqueeze(0) if style.dim() == 3 else style
        return temporal_errors(lambda frames: forward(frames, style.expand(len(frames), -1, -1, -1)), [clip],
                               batch_size=batch_size)


def graph_forward(path: str | Path | Any) -> Forward:
    """The whole-forward ONNX graph of an export (``forward.onnx``, ``forward.int8.onnx``) as a ``(content, style)
    -> image`` callable (what ships is what is measured); the graphs take one image at a time."""
    from ..export.runtime import OnnxStylizer

    graph = path if isinstance(path, OnnxStylizer) else OnnxStylizer.from_file(path)
    return lambda content, style: torch.cat([graph.forward(c[None], s[None]) for c, s in zip(content, style,
                                                                                              strict=True)])


def temporal_of_file(path: str | Path, evaluation: TemporalEvaluation, styles: Tensor) -> dict[str, float]:
    """The temporal errors of a model file (``model.pt``) or an exported graph (``.onnx``)."""
    if Path(path).suffix == ".onnx":
        return evaluation(graph_forward(path), styles)
    from ..models.io import load_model

    model, _ = load_model(path)
    return evaluation(model, styles)
