"""Run under torchrun by tests: train a tiny job and record, per rank, its losses and a digest of its weights."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import tiny_config  # noqa: E402

from distst.models import build  # noqa: E402
from distst.prune.masks import MaskedTraining, full_masks, prunable_layers, prune_magnitude  # noqa: E402
from distst.train import Method, MethodList, TrainContext, train  # noqa: E402


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Probe(Method):
    """Records this rank's loss at every step, its live weights after the last one, and (with masks)
    how many pruned weights or Adam moments of pruned weights are not exactly zero."""

    def __init__(self, masks: dict[str, torch.Tensor] | None = None) -> None:
        self.losses: list[float] = []
        self.digest = ""
        self.masks = masks
        self.masked_nonzero = 0
        self.masked_moments_nonzero = 0

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        self.losses.append(ctx.metrics["loss"])
        self.digest = weights_digest(ctx.model)
        if self.masks is None:
            return
        layers = prunable_layers(ctx.model, ctx.cfg.prune.scope)
        state = getattr(ctx.engine.optimizer, "state", {})
        for name, mask in self.masks.items():
            weight = layers[name].weight
            self.masked_nonzero += int(torch.count_nonzero(weight.detach()[~mask]))
            if weight in state:
                self.masked_moments_nonzero += int(torch.count_nonzero(state[weight]["exp_avg"][~mask]))


def main() -> None:
    out_dir, report_dir, overrides = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    settings = dict(o.split("=", 1) for o in overrides)
    mask_rate = float(settings.pop("mask_rate", 0))  # > 0: train with magnitude masks of this sparsity
    cfg = tiny_config(out_dir, **settings)
    probe, method = Probe(), None
    if mask_rate:
        torch.manual_seed(cfg.train.seed)  # the trainer's own initial weights, identical on every rank
        model = build(cfg.model)
        masks = prune_magnitude(model, full_masks(model, cfg.prune.scope), mask_rate, 1, layerwise=False)
        probe = Probe(masks)
        method = MethodList([MaskedTraining(masks), probe])
    result = train(cfg, out_dir, method or probe)
    rank = torch.distributed.get_rank()
    report = {"rank": rank, "world": torch.distributed.get_world_size(), "losses": probe.losses,
              "steps": result.steps, "digest": probe.digest, "masked_nonzero": probe.masked_nonzero,
              "masked_moments_nonzero": probe.masked_moments_nonzero}
    (report_dir / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
