"""The fp32 master weights of a low-precision (bf16/fp16) run: where DeepSpeed keeps them, and reaching them.

In a bf16 run the module DeepSpeed trains holds bf16 weights; the optimizer steps fp32 copies ("masters") and
rounds them into the module after each step. Everything that must not see the rounding reads the masters:
evaluation, the rewind point, the model file, a method's final fold (slimming scales, QAT's int8 grid), and
masks that must reach the optimizer. DeepSpeed keeps them in one of three places:

- ZeRO-1/2 (and its BF16_Optimizer): flat fp32 partitions, reached per parameter through
  ``deepspeed.utils.safe_get/set_full_fp32_param`` (collective: every rank calls it for the same parameters);
- ZeRO-0 in bf16 (DeepSpeed's DDP-bf16 branch, ``FP16_UnfusedOptimizer``): whole fp32 clones in the optimizer's
  ``fp32_groups``, which DeepSpeed's API does not reach; ``link_masters`` records the pairing on each parameter;
- fp32 training: the parameter is its own master.

A frozen parameter has no master in any optimizer; ``keep_frozen_fp32`` keeps its fp32 value before the cast.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

_MASTER = "_distst_fp32_master"  # the fp32 clone of an FP16_UnfusedOptimizer's parameter
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


def link_masters(engine: Any) -> int:
    """Record, on each parameter of ``engine``'s DDP-bf16/fp16 optimizer, its fp32 master (the optimizer keeps
    them in parallel lists). Returns how many were linked (0 for any other optimizer)."""
    optimizer = engine.optimizer
    low, high = getattr(optimizer, "fp16_groups", None), getattr(optimizer, "fp32_groups", None)
    if low is None or high is None or getattr(optimizer, "bf16_groups", None) is not None:
        return 0
    linked = 0
    for low_group, high_group in zip(low, high, strict=True):
        for param, master in zip(low_group, high_group, strict=True):
            setattr(param, _MASTER, master)
            linked += 1
    return linked


def drop_warm_up_step(engine: Any) -> bool:
    """Undo the step DeepSpeed's DDP-bf16/fp16 optimizer takes with zero gradients at construction (to create
    the inner optimizer's state): it leaves the weights and moments at zero but Adam's step count at 1, so every
    later step's bias correction is one step off (ZeRO-0 bf16 trained differently from fp32 and from ZeRO-1/2:
    E 1.4e-3 apart after one step). The state is dropped; the first real step creates it afresh. Returns
    whether it was dropped (only for that optimizer, before any real step)."""
    optimizer = engine.optimizer
    if getattr(optimizer, "fp32_groups", None) is None or getattr(optimizer, "bf16_groups", None) is not None:
        return False
    inner = getattr(optimizer, "optimizer", None)
    states = list(getattr(inner, "state", {}).values())
    if not states or any(torch.count_nonzero(s[k]) for s in states for k in ADAM_MOMENTS if k in s):
        return False
    inner.state.clear()
    return True


def keep_frozen_fp32(module: nn.Module) -> int:
    """Before DeepSpeed casts ``module`` to bf16/fp16: keep an fp32 copy of each frozen parameter (a pretrained
    encoder), which no optimizer holds a master of, so evaluation and the model file keep its real values.
    Returns how many were kept."""
    frozen = [p for p in module.parameters() if not p.requires_grad and p.dtype == torch.float32]
    for param in frozen:
        setattr(param, _MASTER, param.detach().clone())
    return len(frozen)


def set_fp32_master(param: nn.Parameter, value: Tensor) -> None:
    """Write ``value`` into ``param``'s fp32 master (ZeRO-0 bf16 clone or ZeRO-1/2 partition); the parameter
    itself when it is its own master. Collective under ZeRO-1/2."""
    from deepspeed.utils import safe_set_full_fp32_param

    linked = getattr(param, _MASTER, None)
    with torch.no_grad():
        if linked is not None:
            linked.copy_(value.view_as(linked))
        elif getattr(param, "_hp_mapping", None) is not None:
            safe_set_full_fp32_param(param, value.to(param.device, torch.float32).view(_shape(param)))
        else:
            param.copy_(value)


def is_partitioned(model: nn.Module) -> bool:
    """Whether ZeRO-3 has partitioned the model's parameters across ranks."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _shape(param: nn.Parameter) -> torch.Size:
    return getattr(param, "ds_shape", param.shape)  # ZeRO-3's local tensor is empty; ds_shape is the whole


def fp32_master(param: nn.Parameter) -> Tensor:
    """The fp32 value the optimizer holds for ``param`` (a copy under ZeRO; the clone itself at ZeRO-0 bf16);
    the parameter in fp32 when it is its own master. Collective under ZeRO-1/2/3."""
    from deepspeed.utils import safe_get_full_fp32_param

    master = getattr(param, _MASTER, None)
    if master is None:
        master = safe_get_full_fp32_param(param)
    if master is None:
        return param.detach().float()
    return master.detach().float().view(_shape(param))


@torch.no_grad()
def scale_master(engine: Any | None, param: nn.Parameter, factor: Tensor) -> bool:
    """Multiply ``param``'s fp32 master and its Adam moments by ``factor`` (a mask, for pruning) wherever the
    optimizer keeps them. Collective under ZeRO-1/2. Returns False where no separate master was reached."""
    from deepspeed.utils import (
        safe_get_full_fp32_param,
        safe_get_full_optimizer_state,
        safe_set_full_fp32_param,
        safe_set_full_optimizer_state,
    )

    linked = getattr(param, _MASTER, None)
    if linked is not None:  # ZeRO-0 bf16: the clone is what the inner torch optimizer steps and keys its state by
        linked.mul_(factor.to(linked.device, linked.dtype))
        _scale_moments(_inner_state(engine).get(linked, {}), factor)
        return True
    master = safe_get_full_fp32_param(param)
    if master is not None:  # ZeRO-1/2: flat partitions; moments only once DeepSpeed linked them (first step)
        keep = factor.to(master.device, master.dtype)
        safe_set_full_fp32_param(param, master * keep)
        if getattr(engine.optimizer, "_hp_optimizer_states_linked", True):
            for key in ADAM_MOMENTS:
                safe_set_full_optimizer_state(param, safe_get_full_optimizer_state(param, key) * keep, key)
        return True
    if param.dtype == torch.float32:  # its own master: the caller masks the weight; moments keyed by it
        _scale_moments(_inner_state(engine).get(param, {}), factor)
        return True
    return False


def _inner_state(engine: Any | None) -> dict[Any, dict[str, Tensor]]:
    if engine is None:  # a model trained outside DeepSpeed: no optimizer state to reach
        return {}
    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)
    return getattr(optimizer, "state", {})


def _scale_moments(state: dict[str, Tensor], factor: Tensor) -> None:
    for key in ADAM_MOMENTS:
        if key in state:
            state[key].mul_(factor.to(state[key].device, state[key].dtype))


def fp32_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict on the CPU with every parameter in fp32 from the optimizer's master copy when it keeps one
    (bitwise the parameter itself in fp32 training); buffers in fp32. Collective under ZeRO: every rank calls it."""
    masters = {name: fp32_master(p) for name, p in model.named_parameters()}
    return {k: (masters[k] if k in masters else v.float() if v.is_floating_point() else v).detach().cpu().clone()
            for k, v in model.state_dict().items()}


@torch.no_grad()
def use_fp32_masters(model: nn.Module) -> bool:
    """Turn ``model`` into fp32 holding the masters, in place (the same Parameter objects): for the end of
    training, so a method's final fold and the model file see the weights the optimizer trained, not their
    bf16 rounding. From then on the module is the truth (a fold changes it, not the optimizer's copies).
    Collective under ZeRO-1/2. Returns False for a ZeRO-3 (partitioned) model, which is left alone."""
    if is_partitioned(model):
        return False
    masters = [(p, fp32_master(p)) for p in model.parameters()]
    model.float()
    for param, master in masters:
        param.copy_(master)
    return True
