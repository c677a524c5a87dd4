"""Run under torchrun by tests: train a tiny job and record, per rank, its losses and a digest of its weights."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import tiny_config  # noqa: E402

from distst.train import Method, TrainContext, train  # noqa: E402


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Probe(Method):
    """Records this rank's loss at every step and its live weights after the last one."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.digest = ""

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        self.losses.append(ctx.metrics["loss"])
        self.digest = weights_digest(ctx.model)


def main() -> None:
    out_dir, report_dir, overrides = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    cfg = tiny_config(out_dir, **dict(o.split("=", 1) for o in overrides))
    probe = Probe()
    result = train(cfg, out_dir, probe)
    rank = torch.distributed.get_rank()
    report = {"rank": rank, "world": torch.distributed.get_world_size(), "losses": probe.losses,
              "steps": result.steps, "digest": probe.digest}
    (report_dir / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
