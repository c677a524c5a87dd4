"""The temporal-consistency metric: Lai et al.'s (ECCV 2018) warping error of stylised clips with known flow.

For outputs O_t (T, C, H, W) in [0, 1], flows f_t (frame t -> t+1) and non-occlusion masks M_t:

    E_t = sum_x M_t(x) * d_t(x) / (C * sum_x M_t(x)),   d_t = (W(O_{t+1}, f_t) - O_t)^2   ("l2": E_warp)
                                                         d_t = |W(O_{t+1}, f_t) - O_t|     ("l1": ReReVST's)

averaged over the frame pairs with a non-empty mask (sums over pixels and channels).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .clips import ClipError, FlowClip
from .flow import warp

NORMS = ("l1", "l2")


def _check_shapes(outputs: Tensor, flows: Tensor, masks: Tensor) -> None:
    t, _, h, w = outputs.shape if outputs.dim() == 4 else (0, 0, 0, 0)
    if t < 2 or tuple(flows.shape) != (t - 1, 2, h, w) or tuple(masks.shape) != (t - 1, 1, h, w):
        raise ValueError(f"warping_error needs outputs (T >= 2, C, H, W), flows (T-1, 2, H, W), masks "
                         f"(T-1, 1, H, W); got {tuple(outputs.shape)}, {tuple(flows.shape)}, {tuple(masks.shape)}")


def warping_error(outputs: Tensor, flows: Tensor, masks: Tensor, norm: str = "l2") -> float:
    """Mean over frame pairs of the masked per-pixel-and-channel error between O_t and W(O_{t+1}, f_t).

    ``norm="l2"``: squared differences (Lai et al.'s E_warp); ``"l1"``: absolute ones. In float64, one pair at a
    time (a long clip is not copied whole); pixels where the mask is 0 never count, whatever they hold. Pairs
    with an empty mask are skipped; raises ``ClipError`` when every mask is empty.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; got {norm!r}")
    _check_shapes(outputs, flows, masks)
    channels = outputs.shape[1]
    errors = []
    for t in range(len(flows)):
        mask = masks[t:t + 1].to(outputs.device, torch.float64)
        weight = float(mask.sum())
        if weight <= 0:
            continue
        warped = warp(outputs[t + 1:t + 2].double(), flows[t:t + 1].to(outputs.device, torch.float64))
        diff = warped - outputs[t:t + 1].double()
        d = diff.square() if norm == "l2" else diff.abs()
        d = torch.where(mask > 0, d * mask, 0.0)  # NaN or inf where the mask is 0 must not leak in
        errors.append(float(d.sum()) / (channels * weight))
    if not errors:
        raise ClipError(f"all {len(flows)} masks are empty: no pixel is visible in two consecutive frames, so the "
                        "warping error is undefined (check the masks or flows)")
    return sum(errors) / len(errors)


def _stylize_clip(stylize: Callable[[Tensor], Tensor], frames: Tensor, batch_size: int,
                  device: torch.device | str | None) -> Tensor:
    """``stylize`` over the frames in batches, clamped to [0, 1] and cropped to the frames' size (top left)."""
    height, width = frames.shape[-2:]
    outputs = []
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            batch = frames[start:start + batch_size].to(device) if device is not None else frames[start:start + batch_size]
            out = stylize(batch)
            if out.dim() != 4 or out.shape[0] != len(batch) or out.shape[-2] < height or out.shape[-1] < width:
                raise ValueError(f"the stylizer returned {tuple(out.shape)} for frames {tuple(batch.shape)}; "
                                 "it must return (N, C, H', W') with H' >= H, W' >= W")
            outputs.append(out[..., :height, :width].float().clamp(0, 1))
    return torch.cat(outputs)


def temporal_errors(stylize: Callable[[Tensor], Tensor], clips: list[FlowClip], batch_size: int = 8,
                    device: torch.device | str | None = None) -> dict[str, float]:
    """``{"temporal_error": mean l2 warping error, "temporal_l1": mean l1 one, "output_std": mean per-channel spatial
    std of the outputs}`` over ``clips`` of ``stylize``'s
    outputs: it takes (N, 3, H, W) frames (moved to ``device`` first when given), ``batch_size`` at a time.
    ``output_std`` is there to read the errors by: a flat output is perfectly stable, and says nothing."""
    if not clips:
        raise ValueError("temporal_errors needs at least one clip")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    l2, l1, contrast = [], [], []
    for clip in clips:
        outputs = _stylize_clip(stylize, clip.frames, batch_size, device)
        l2.append(warping_error(outputs, clip.flows, clip.masks, "l2"))
        l1.append(warping_error(outputs, clip.flows, clip.masks, "l1"))
        contrast.append(float(outputs.double().flatten(2).std(2).mean()))
    return {"temporal_error": sum(l2) / len(l2), "temporal_l1": sum(l1) / len(l1),
            "output_std": sum(contrast) / len(contrast)}
