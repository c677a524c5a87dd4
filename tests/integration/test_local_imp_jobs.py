"""Every style-transfer model's local IMP job (``jobs/local/imp_<model>.yaml``) runs end to end, as written, with
only its length cut (two steps a level, one pruning round): levels, summary and report. A model added with its
local job is checked with nothing to add here."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REPO

from distst import registry
from distst.cli import main
from distst.config import load_config
from distst.models import StyleTransferModel
from distst.prune import run_schedule

registry.load_builtins()
# distst's own models (tests register toy ones in the same process).
STYLE_MODELS = sorted(name for name, record in registry.MODELS.items()
                      if issubclass(record.model_class, StyleTransferModel)
                      and record.model_class.__module__.startswith("distst."))
SHORT = {"train.steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2, "prune.rounds": 1,
         "prune.rewind_step": 1, "data.eval_pairs": 2, "data.workers": 0, "tracking.backend": "none"}


def test_every_style_transfer_model_has_a_local_imp_job() -> None:
    missing = [name for name in STYLE_MODELS if not (REPO / "jobs" / "local" / f"imp_{name}.yaml").is_file()]
    assert not missing, f"no jobs/local/imp_<model>.yaml for {missing}"
    assert {"adain", "sanet", "mccnet", "lst", "manet", "adaattn"} <= set(STYLE_MODELS)


@pytest.mark.slow
@pytest.mark.parametrize("name", STYLE_MODELS)
def test_the_local_imp_job_runs_end_to_end(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    job = REPO / "jobs" / "local" / f"imp_{name}.yaml"
    if not job.is_file():
        pytest.fail(f"{job} is missing")
    out = tmp_path / "run"
    cfg = load_config(job, {**SHORT, "run.out_dir": str(out)})
    assert cfg.model.name == name and cfg.prune.method == "imp"
    result = run_schedule(cfg, out)
    assert not result.stopped
    levels = result.summary["levels"]
    assert [level["level"] for level in levels] == [0, 1]
    assert levels[1]["sparsity"] == pytest.approx(cfg.prune.rate, abs=0.01)
    for level in levels:  # E is the sum of the model's own errors
        errors = [value for key, value in level.items() if key.endswith("_error") and key != "total_error"]
        assert len(errors) >= 2 and level["total_error"] == pytest.approx(sum(errors), rel=1e-5) and sum(errors) > 0
    assert main(["report", str(out)]) == 0
    capsys.readouterr()
    assert (out / "report" / "report.md").is_file()
