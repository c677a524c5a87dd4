"""Fake quantisation with core torch ops (``torch.fake_quantize_per_channel_affine`` / ``_per_tensor_affine``),
matching what ONNX Runtime's static QDQ quantisation does to the exported graph:

- weights: symmetric int8, one scale per output channel (scale = max|w| / 127, zero point 0), recomputed from the
  current weights at every forward (a parametrization: no state, and the optimizer keeps the float weights);
- activations (every quantised conv's input): asymmetric uint8 per tensor, from running min/max observers
  (an exponential moving average while training, frozen in eval mode), as MinMax calibration measures them.
  An observer is not a submodule (it stays out of the model's state dict and DeepSpeed's), so it follows the
  train/eval mode of the conv it observes: ``model.eval()`` stops every observer.

Both pass gradients straight through inside the range (the ops' own backward). torch.ao's eager/FX
quantisation is deprecated, so this is written on the core ops, with ``torch.nn.utils.parametrize`` for weights
and a forward pre-hook for inputs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..distributed import is_distributed

INT8_MAX = 127
UINT8_MAX = 255


class FakeQuantWeight(nn.Module):
    """Parametrization: the weight rounded to its per-output-channel symmetric int8 grid."""

    def forward(self, weight: Tensor) -> Tensor:
        flat = weight.detach().float().flatten(1).abs().amax(dim=1)
        scale = (flat / INT8_MAX).clamp_min(torch.finfo(torch.float32).tiny)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        # In fp32 (the op has no bf16 kernel); back to the training dtype after.
        return torch.fake_quantize_per_channel_affine(weight.float(), scale, zero, 0, -INT8_MAX - 1,
                                                      INT8_MAX).to(weight.dtype)


class ActivationObserver(nn.Module):
    """Running min/max of a tensor (EMA with ``momentum``; the first batch sets them) and its uint8 fake-quant.

    The running values are buffers registered here but kept out of the model's state dict by the method
    (it checkpoints them itself), so ``model.pt`` keeps the reference layout.
    """

    def __init__(self, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("low", torch.zeros(()), persistent=False)
        self.register_buffer("high", torch.zeros(()), persistent=False)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long), persistent=False)
        self.frozen = False
        # Whether ``seen`` > 0, kept on the host: reading the buffer would wait on the device at every forward.
        self._started = False

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        x = x.detach().float()
        bounds = torch.stack([-x.amin(), x.amax()])  # both as maxima: one all-reduce for the pair
        if is_distributed():
            # Every rank keeps the same ranges (ranks see different batches): the union of theirs.
            dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
        low, high = -bounds[0], bounds[1]
        if not self._started:
            self.low.copy_(low)
            self.high.copy_(high)
        else:
            self.low.lerp_(low, self.momentum)
            self.high.lerp_(high, self.momentum)
        self.seen += 1
        self._started = True

    def quantize(self, x: Tensor) -> Tensor:
        if not self._started:
            return x  # nothing observed yet (an eval before the first step): leave the input as is
        low, high = self.low.clamp_max(0.0), self.high.clamp_min(0.0)  # the range holds zero (padding, ReLU)
        scale = ((high - low) / UINT8_MAX).clamp_min(torch.finfo(torch.float32).tiny)
        zero = (-low / scale).round().clamp(0, UINT8_MAX).to(torch.int32)
        return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, 0, UINT8_MAX).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and not self.frozen:
            self.observe(x)
        return self.quantize(x)

    def state(self) -> dict[str, Tensor]:
        return {"low": self.low.clone(), "high": self.high.clone(), "seen": self.seen.clone()}

    def load(self, state: dict[str, Tensor]) -> None:
        for name in ("low", "high", "seen"):
            getattr(self, name).copy_(state[name])
        self._started = bool(state["seen"] > 0)
