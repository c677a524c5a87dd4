"""Run under torchrun by tests: a 4-step ZeRO-1 run where rank 1 alone runs out of space (a file-size limit set
after step 2) at the checkpoint of step 4; each rank records the error it stopped with."""

from __future__ import annotations

import json
import resource
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import patience, tiny_config  # noqa: E402

from distst.diskfull import DiskFull  # noqa: E402
from distst.train import Method, TrainContext, train  # noqa: E402


class LimitRank1(Method):
    """After step 3's optimizer step (step 2's checkpoint is written), rank 1 may write files of half the size of
    its optimizer partition only."""

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        if ctx.step != 3 or ctx.dist.rank != 1:
            return
        partition = ctx.workdir / "checkpoints" / "step_00000002" / "main" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill, as on a full disk
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (partition.stat().st_size // 2, hard))


def main() -> None:
    out_dir, report_dir = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = tiny_config(out_dir, train__steps=4, deepspeed__zero_stage=1, train__collective_timeout=patience(60))
    import torch.distributed as dist

    report: dict[str, object] = {"error": None}
    try:
        train(cfg, out_dir, LimitRank1())
    except DiskFull as err:
        report = {"error": type(err).__name__, "message": str(err), "exit_code": err.exit_code}
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # the report itself is written
    (report_dir / f"rank{dist.get_rank()}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
