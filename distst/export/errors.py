"""E (the evaluation's content + style error) of exported graphs: the model's own ``errors()`` with its
forward pass answered by ONNX Runtime, so fp32 torch, fp32 ONNX and int8 ONNX are measured alike."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..evaluate import evaluate
from ..models import DiststModel
from ..models.io import load_model
from .onnx_export import ExportError
from .runtime import OnnxStylizer


@contextlib.contextmanager
def onnx_forward(model: DiststModel, runner: OnnxStylizer) -> Iterator[list[int]]:
    """``model(content, style)`` runs ``runner``'s forward graph (one pair at a time: the graphs have batch 1).
    Yields a one-element call counter: a model whose ``errors()`` never call its forward is not measured."""
    calls = [0]

    def forward(content: Tensor, style: Tensor, alpha: float = 1.0) -> Tensor:
        if alpha != 1.0:
            raise ExportError("exported graphs stylise at alpha 1")
        calls[0] += 1
        return torch.cat([runner.forward(content[i:i + 1], style[i:i + 1]) for i in range(len(content))])

    model.forward = forward  # type: ignore[method-assign]  # an instance attribute: nn.Module.__call__ uses it
    try:
        yield calls
    finally:
        del model.forward


def compare_errors(model_file: str | Path, out_dir: str | Path, content: Tensor, style: Tensor,
                   variants: tuple[str, ...] = ("fp32", "int8"), vgg_weights: str | Path | None = None
                   ) -> dict[str, Any]:
    """E and its terms on the pairs for torch and each exported variant, with the model's loss network: built
    from ``vgg_weights`` when given (the run's loss VGG, so that E matches the run's), else the model's own
    (a model file records no weight files: without pretrained weights that is a He-initialised VGG)."""
    model, _ = load_model(model_file, **({"vgg_weights": str(vgg_weights)} if vgg_weights else {}))
    model.eval()
    loss_net = model.loss_network()
    results: dict[str, Any] = {"torch": evaluate(model, loss_net, content, style)}
    for variant in variants:
        runner = OnnxStylizer(out_dir, variant)
        with onnx_forward(model, runner) as calls:
            errors = evaluate(model, loss_net, content, style)
        if not calls[0]:
            raise ExportError(f"{model.name}'s errors() do not go through its forward pass, so the E of an ONNX "
                              "graph cannot be measured with them")
        results[variant] = errors
    return results
