"""Parameter and MAC counts per group, measured with ``torch.utils.flop_counter``.

The flop counter reports FLOPs with a multiply-add counted as 2; distst reports MACs (= FLOPs / 2) for
convolutions and the attention matmuls. Element-wise work (ReLU, norms, softmax, padding) is not counted.
"""

from __future__ import annotations

import copy

import torch
from torch.utils.flop_counter import FlopCounterMode

from .base import DiststModel


def macs(model: DiststModel, size: int, style_size: int | None = None) -> dict[str, int]:
    """MACs of one stylisation (content ``size`` x ``size``, style ``style_size`` or the same), per group and
    'total'."""
    # Counted on the meta device: shapes only, no arithmetic, so even 512x512 SANet takes milliseconds.
    shadow = copy.deepcopy(model).to("meta").eval()
    image = torch.empty(1, 3, size, size, device="meta")
    style = torch.empty(1, 3, style_size, style_size, device="meta") if style_size else image
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        shadow(image, style)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    out = {group: sum(counts.get(f"{root}.{group}", {}).values()) // 2 for group in model.groups()}
    out["total"] = sum(counts.get("Global", {}).values()) // 2
    return out
