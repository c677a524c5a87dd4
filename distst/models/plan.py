"""Channel plans: the output width of every resizable layer, by group and layer name.

Every model is built from a plan. The default is the model's reference plan times ``model.width``; a
physically slimmed model carries its own plan (in ``model.pt`` and in ``model.plan`` of the run's config).
A plan given in a config may be partial: layers it leaves out keep their default width.
"""

from __future__ import annotations

from collections.abc import Mapping

Plan = dict[str, dict[str, int]]


class PlanError(ValueError):
    """A channel plan a model cannot be built from; the message names the layer."""


def scaled(channels: int, width: float) -> int:
    """A hidden width scaled by the model's channel multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


def scale_plan(reference: Mapping[str, Mapping[str, int]], width: float) -> Plan:
    return {group: {layer: scaled(c, width) for layer, c in layers.items()} for group, layers in reference.items()}


def merge_plan(default: Plan, given: Mapping[str, Mapping[str, int]] | None, model: str) -> Plan:
    """``default`` with the widths of ``given`` laid over it; unknown groups or layers and non-positive widths
    are refused with the layer's name and the valid ones."""
    plan = {group: dict(layers) for group, layers in default.items()}
    for group, layers in (given or {}).items():
        if group not in plan:
            raise PlanError(f"model.plan.{group}: {model} has no resizable group {group!r}; "
                            f"its groups: {', '.join(plan) or 'none'}")
        for layer, channels in layers.items():
            if layer not in plan[group]:
                raise PlanError(f"model.plan.{group}.{layer}: {model} has no resizable layer {layer!r} in {group}; "
                                f"valid: {', '.join(plan[group])}")
            if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
                raise PlanError(f"model.plan.{group}.{layer}={channels!r}: a layer needs at least one channel")
            plan[group][layer] = channels
    return plan


def require_equal(plan: Plan, first: tuple[str, str], second: tuple[str, str], why: str) -> None:
    """Refuse a plan whose two named layers differ where the model adds or blends their outputs."""
    a, b = plan[first[0]][first[1]], plan[second[0]][second[1]]
    if a != b:
        raise PlanError(f"model.plan.{second[0]}.{second[1]}={b} must equal {first[0]}.{first[1]}={a}: {why}")


def plan_differences(plan: Plan, default: Plan) -> Plan:
    """Only the layers whose widths differ from ``default`` (empty: the default plan)."""
    out: Plan = {}
    for group, layers in plan.items():
        changed = {k: v for k, v in layers.items() if default.get(group, {}).get(k) != v}
        if changed:
            out[group] = changed
    return out
