"""Physical channel slimming: remove output channels and everything coupled to them, and rebuild from a plan.

A *selection* names, for some of a model's channel layers (``model.channel_layers()``), the output channels to
keep. Torch-Pruning's dependency graph finds what each removal drags along: the next layer's input channels,
and the channels tied by additions (SANet's and MCCNet's residuals, the alpha blend of the transform's output
with the content features), so one removal may narrow several plan layers at once; ``coupled_layers`` reports
those sets, and selectors choose channels once per set. Mirrored encoder/decoder widths are not coupled by any
tensor and are chosen explicitly by the methods.

``mask_channels`` zeroes the same channels in place instead (every coupled output too): the masked parent that
the slimmed model must equal, output for output.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ...models import DiststModel, create
from ...models.plan import Plan

#: group -> plan layer -> the output channels kept (ascending).
Selection = dict[str, dict[str, list[int]]]
LayerKey = tuple[str, str]

# Torch-Pruning's handlers of output-channel removal, by module type: what a mask must zero.
_OUT_HANDLERS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)


@contextlib.contextmanager
def _traceable(model: nn.Module) -> Iterator[None]:
    """Every parameter requiring grad (the graph is traced through autograd), eval mode; restored after."""
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.requires_grad_(True).eval()
    try:
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)


def trace_size(model: DiststModel) -> int:
    """The smallest input side that every model accepts (minimum size, input multiple) for tracing."""
    multiple = max(1, type(model).input_multiple)
    return max(32, -(-type(model).min_size // multiple) * multiple)


def dependency_graph(model: DiststModel) -> tp.DependencyGraph:
    with _traceable(model), torch.enable_grad():  # traced through autograd, whatever the caller's mode
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=trace_size(model), forward_fn=lambda m, size: m.coupling_forward(size))


def _layer_index(model: DiststModel) -> dict[int, LayerKey]:
    return {id(module): (group, name) for group, layers in model.channel_layers().items()
            for name, module in layers.items()}


def _group(graph: tp.DependencyGraph, module: nn.Module, pruned: list[int]) -> Any:
    handler = tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels
    return graph.get_pruning_group(module, handler, idxs=pruned)


def _out_channel_targets(group: Any) -> Iterator[tuple[nn.Module, list[int]]]:
    """Modules whose output channels ``group`` removes, with the indices."""
    for dep, idxs in group:
        if dep.handler in _OUT_HANDLERS:
            yield dep.target.module, list(idxs)


class ChannelGraph:
    """A model's dependency graph, traced once (a trace costs a forward pass through autograd): what a prune
    step's channel choice (the coupled sets) and its slimming both use."""

    def __init__(self, model: DiststModel) -> None:
        self.model = model
        self.graph = dependency_graph(model)
        self._coupled: list[list[LayerKey]] | None = None

    def coupled_layers(self) -> list[list[LayerKey]]:
        """Channel layers whose output channels are tied (removing one's removes the others'), in model order;
        each layer appears in exactly one set, most in a set of their own."""
        if self._coupled is None:
            index = _layer_index(self.model)
            order = list(index.values())
            seen: set[LayerKey] = set()
            self._coupled = []
            for group, layers in self.model.channel_layers().items():
                for name, module in layers.items():
                    if (group, name) in seen:
                        continue
                    members = [index[id(m)] for m, _ in _out_channel_targets(_group(self.graph, module, [0]))
                               if id(m) in index]
                    members = sorted(set(members) | {(group, name)}, key=order.index)
                    seen.update(members)
                    self._coupled.append(members)
        return self._coupled

    def leaders(self, keys: set[LayerKey]) -> dict[LayerKey, list[LayerKey]]:
        """For each coupled set touching ``keys``: its first member in ``keys`` -> every member."""
        out = {}
        for members in self.coupled_layers():
            chosen = [m for m in members if m in keys]
            if chosen:
                out[chosen[0]] = members
        return out


def coupled_layers(model: DiststModel) -> list[list[LayerKey]]:
    """``ChannelGraph(model).coupled_layers()``: one trace, for a single question."""
    return ChannelGraph(model).coupled_layers()


def _pruned(model: DiststModel, selection: Selection) -> Iterator[tuple[nn.Module, list[int]]]:
    layers = model.channel_layers()
    for group, kept_by_layer in selection.items():
        for name, kept in kept_by_layer.items():
            module = layers[group][name]
            width = module.weight.shape[0]
            if not kept or len(set(kept)) != len(kept) or min(kept) < 0 or max(kept) >= width:
                raise ValueError(f"selection {group}.{name}: keep 1 to {width} distinct channels of 0..{width - 1}")
            pruned = sorted(set(range(width)) - set(kept))
            if pruned:
                yield module, pruned


def mask_channels(model: DiststModel, selection: Selection) -> DiststModel:
    """Zero the weights and biases of every output channel the selection removes, and of every output channel
    coupled to one (in place): the masked-but-unslimmed parent."""
    graph = dependency_graph(model)
    with torch.no_grad():
        for module, pruned in list(_pruned(model, selection)):
            for target, idxs in _out_channel_targets(_group(graph, module, pruned)):
                target.weight[idxs] = 0
                if target.bias is not None:
                    target.bias[idxs] = 0
    return model


def current_plan(model: DiststModel) -> Plan:
    """The model's plan with the channel layers' widths read from their modules."""
    plan = copy.deepcopy(model.plan)
    for group, layers in model.channel_layers().items():
        for name, module in layers.items():
            plan[group][name] = module.weight.shape[0]
    return plan


def slim(model: DiststModel, selection: Selection, graph: ChannelGraph | None = None) -> DiststModel:
    """A new, physically smaller model keeping the selected channels (and the originals' weights and biases of
    every kept channel); built from its channel plan, so its layout is exactly a model of that plan's.

    Given ``graph`` (``model``'s own, already traced) the surgery uses it and consumes ``model``; without it,
    ``model`` is left as it was (a copy is traced and cut)."""
    if graph is None:
        graph = ChannelGraph(copy.deepcopy(model))
    elif graph.model is not model:
        raise ValueError("slim: the graph was traced from another model")
    pruned = graph.model
    for module, removed in list(_pruned(pruned, selection)):
        group = _group(graph.graph, module, removed)
        if not graph.graph.check_pruning_group(group):
            raise ValueError(f"removing {len(removed)} channels of {module} would leave a layer without channels")
        group.prune()
    section = model.cfg.model_copy(update={"plan": current_plan(pruned)})
    slimmed = create(section, weights=pruned.state_dict(), source="the slimmed model")  # a layout check too
    slimmed.encoder_source = getattr(model, "encoder_source", None)
    slimmed.train(model.training)
    return slimmed


def widths(model: DiststModel) -> dict[str, dict[str, int]]:
    """Output channels of every channel layer, by group."""
    return {group: {name: int(m.weight.shape[0]) for name, m in layers.items()}
            for group, layers in model.channel_layers().items()}
