"""Every final model of a study measured the same way: one loss network, the same held-out pairs, one size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..data.loader import eval_pairs
from ..evaluate import evaluate
from ..models import create, param_counts
from ..models.complexity import macs
from ..models.io import load_model
from ..prune.channels.runner import write_random_loss_vgg
from ..video.evaluation import TemporalEvaluation

LOSS_VGG = "loss_vgg.pth"


def study_loss_network(dense: Config, out: Path) -> nn.Module:
    """The dense job's frozen loss VGG; without pretrained weights one He-initialised file written once into
    ``out`` (so a re-run, and every model, is measured with the very same network)."""
    section = dense.model
    if getattr(section, "vgg_weights", "absent") is None:
        path = out / LOSS_VGG
        if not path.is_file():
            write_random_loss_vgg(path, section.width, dense.train.seed)
        section = section.model_copy(update={"vgg_weights": str(path)})
    net = create(section, weights=True).loss_network()
    assert net is not None, f"model {section.name} has no loss network: a study compares E"
    return net.eval()


@torch.no_grad()
def measure_model(path: Path, loss_net: nn.Module, content: torch.Tensor, style: torch.Tensor,
                  size: int, temporal: TemporalEvaluation | None = None) -> dict[str, Any]:
    """E (and its terms), the temporal errors on ``temporal``'s clips, parameters, the fraction of conv/linear
    weights that are zero (an IMP ticket's sparsity; dense MACs are counted either way), MACs of one
    stylisation at ``size`` and the file's MB."""
    model, _ = load_model(path)
    errors = evaluate(model, loss_net, content, style)
    if temporal:
        errors.update(temporal(model, style))
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights) / max(1, sum(w.numel() for w in weights))
    return {**errors, "params": param_counts(model)["total"], "sparsity": zeros, "macs": macs(model, size)["total"],
            "file_mb": path.stat().st_size / 2**20}


def held_out(dense: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense job's held-out pairs at its eval size: every model of the study is measured on them."""
    return eval_pairs(dense.data)


def measure_all(paths: dict[str, Path], dense: Config, out: Path, loss_net: nn.Module | None = None,
                pairs: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, dict[str, Any]]:
    """One evaluation per model, all on ``dense``'s held-out pairs at its eval size, with one loss network
    (``loss_net`` and ``pairs``: those already built from ``dense``, so a caller that needs them too reads once)."""
    loss_net = loss_net if loss_net is not None else study_loss_network(dense, out)
    content, style = pairs if pairs is not None else held_out(dense)
    size = dense.data.eval_size or dense.data.crop
    section = type(dense.model)
    temporal = TemporalEvaluation.from_config(dense.temporal, content.shape[-1],
                                              section.model_class.input_multiple, section.model_class.min_size)
    return {name: measure_model(path, loss_net, content, style, size, temporal) for name, path in paths.items()}
