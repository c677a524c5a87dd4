"""Adding a model is one file, adding a method one file: the toys of ``tests/toy_models.py`` (a style-transfer
model and a one-run method, registered by their decorators only) run through ``distst train``, ``distst imp``,
``distst export`` and a Ray Tune sweep, with no other file touched. Subprocesses and Ray workers see them
through ``DISTST_PLUGINS`` (``tests/`` on ``PYTHONPATH``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import REPO, SAMPLE, run_distst, tiny_overrides, write_job

from distst.models.io import load_model
from distst.registry import PLUGINS_ENV
from distst.sweep import load_sweep
from distst.track import read_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plugins() -> Iterator[None]:
    """``DISTST_PLUGINS=toy_models`` for this module's subprocesses and Ray workers (they inherit the env)."""
    saved = {name: os.environ.get(name) for name in (PLUGINS_ENV, "PYTHONPATH")}
    os.environ[PLUGINS_ENV] = "toy_models"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests"), saved["PYTHONPATH"]]))
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def test_a_toy_model_and_method_train_prune_and_export_through_the_cli(plugins: None, tmp_path: Path) -> None:
    job = str(write_job(tmp_path / "job.yaml", model="toy_mix"))
    trained = tmp_path / "train"
    run_distst("train", job, *tiny_overrides(trained, prune__method="gate_l1", prune__lam=1.0, train__steps=2))
    assert any("gate_mean" in row for row in read_metrics(trained / "metrics.jsonl"))  # the toy method ran
    model, section = load_model(trained)
    assert section.name == "toy_mix" and "decoder.1.gate" not in model.state_dict()  # folded at the end

    lottery = tmp_path / "imp"
    run_distst("imp", job, *tiny_overrides(lottery, prune__method="imp", prune__rounds=1, prune__rate=0.5,
                                           train__steps=2))
    levels = json.loads((lottery / "summary.json").read_text())["levels"]
    assert [lv["level"] for lv in levels] == [0, 1] and levels[1]["sparsity"] > 0.4

    exported = tmp_path / "onnx"
    run_distst("export", str(trained / "model.pt"), "--out", str(exported))
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["model"]["name"] == "toy_mix" and (exported / "forward.onnx").is_file()


@pytest.mark.xdist_group("ray")
def test_a_sweep_runs_the_toy_model_on_ray_workers(plugins: None, tmp_path: Path) -> None:
    import ray

    from distst.sweep.runner import run_sweep

    overrides = {"model.name": "toy_mix", "model.width": 0.125, "prune.method": "imp", "prune.rounds": 1,
                 "prune.rewind_step": 0, "data.content": f"{SAMPLE}/content-{{000000..000001}}.tar",
                 "data.style": f"{SAMPLE}/style-{{000000..000001}}.tar", "data.crop": 32, "data.batch_size": 2,
                 "data.workers": 0, "data.shuffle_buffer": 16, "data.eval_pairs": 2, "train.steps": 2,
                 "train.checkpoint_every": 2, "train.eval_every": 2, "tracking.backend": "none"}
    spec_path = tmp_path / "toy.yaml"
    spec_path.write_text(yaml.safe_dump({"name": "toy", "job": str(write_job(tmp_path / "job.yaml", "toy_mix")),
                                         "overrides": overrides, "space": {"prune.rate": {"grid": [0.5]}},
                                         "resources": {"cpus": 1}}))
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # started after the env: workers see it
    try:
        outcome = run_sweep(load_sweep(spec_path), tmp_path / "out", resume=False)
    finally:
        ray.shutdown()
    assert not outcome.interrupted
    (result,) = list(outcome.results)
    assert result.error is None and result.metrics["level"] == 1
