"""``distst.outputs`` reads the trainer's checkpoint layout: the newest complete checkpoint is the newest renamed
one with a readable manifest, and an output is stale only when that checkpoint's step is above its own."""

from __future__ import annotations

import json
from pathlib import Path

from distst import outputs
from distst.train import checkpoint


def test_outputs_read_the_checkpoint_layout_of_the_trainer() -> None:
    assert (outputs.MANIFEST, outputs.STAGING_SUFFIX) == (checkpoint.MANIFEST, checkpoint.STAGING_SUFFIX)


def test_only_complete_checkpoints_make_an_output_stale(tmp_path: Path) -> None:
    root = tmp_path / outputs.CHECKPOINTS
    for name, step in (("step_00000002", 2), ("step_00000006.tmp", 6), ("step_00000005", None)):
        (root / name).mkdir(parents=True)
        if step is not None:  # step_5 has no manifest: a save that never finished, as is a staging directory
            (root / name / outputs.MANIFEST).write_text(json.dumps({"step": step}))
    assert outputs.newest_checkpoint(tmp_path) == (root / "step_00000002", 2)
    model = tmp_path / outputs.MODEL
    assert outputs.problem(model, 2) is None and outputs.problem(model, None) is None
    assert outputs.problem(model, 1).startswith(f"{model} is of step 1, but the run's newest checkpoint, "
                                                f"{root / 'step_00000002'}, is of step 2")
    assert outputs.problem(tmp_path / "elsewhere" / outputs.MODEL, 1) is None  # no checkpoints beside it
