"""Run under torchrun by tests: train a tiny job whose method zeroes half of one conv's gradients through
DeepSpeed's full-gradient API, and report whether those weights moved (they must not, under any ZeRO stage)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import tiny_config  # noqa: E402
from integration.test_contracts import FreezeFilters  # noqa: E402

from distst.train import TrainContext, train  # noqa: E402


class FreezeAndWatch(FreezeFilters):
    def on_train_start(self, ctx: TrainContext) -> None:
        self.initial = dict(ctx.model.named_modules())[self.layer].weight.detach().clone()

    def on_train_end(self, ctx: TrainContext) -> None:
        weight = dict(ctx.model.named_modules())[self.layer].weight.detach()
        half = weight.shape[0] // 2
        self.frozen_changed = int((weight[:half] != self.initial[:half]).sum())
        self.free_changed = int((weight[half:] != self.initial[half:]).sum())


def main() -> None:
    out_dir, report, overrides = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    cfg = tiny_config(out_dir, train__steps=3, **dict(o.replace(".", "__", 1).split("=", 1) for o in overrides))
    method = FreezeAndWatch()
    train(cfg, out_dir, method)
    if torch.distributed.get_rank() == 0:
        report.write_text(json.dumps({"edits": len(method.calls), "frozen_changed": method.frozen_changed,
                                      "free_changed": method.free_changed}))


if __name__ == "__main__":
    main()
