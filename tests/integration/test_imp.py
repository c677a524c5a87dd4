"""Iterative magnitude pruning end to end: levels, rewinding, controls, resume, the report."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    REPO,
    distst_command,
    patience,
    run_distst,
    subprocess_env,
    tiny_config,
    tiny_overrides,
    write_job,
)
from PIL import Image

from distst.cli import main
from distst.models import build
from distst.models.io import load_model
from distst.prune import planned_levels, prunable_layers, prune_magnitude, run_schedule
from distst.prune.lottery import initial_state, level_values
from distst.prune.masks import full_masks
from distst.records import record_path, step_records

IMP = {"prune__method": "imp", "prune__rounds": 2, "prune__rewind_step": 2, "model__encoder": "trainable"}


def masks_of(run_dir: Path, level: int) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / f"level_{level}" / "mask.pt", weights_only=True)


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("imp") / "run"
    cfg = tiny_config(out, **IMP)
    result = run_schedule(cfg, out)
    assert not result.stopped
    return out, result.summary


def test_levels_follow_the_sparsity_schedule(imp_run: tuple[Path, dict]) -> None:
    out, summary = imp_run
    assert [row["level"] for row in summary["levels"]] == [0, 1, 2]
    assert summary == json.loads((out / "summary.json").read_text())
    for row in summary["levels"]:
        level = row["level"]
        masks = masks_of(out, level)
        total = sum(m.numel() for m in masks.values())
        assert row["sparsity"] == pytest.approx(1 - 0.8**level, abs=1 / total)
        metrics = level_values(json.loads(record_path(out, f"level_{level}").read_text()))
        assert set(metrics["sparsity_groups"]) == {"encoder", "decoder"}  # AdaIN's transform has no weights
        assert metrics["remaining_weights"] == round(total * 0.8**level)
        assert {"content_error", "style_error", "total_error", "steps", "wall_s", "sparsity_layers"} <= set(metrics)
        assert row["matching"] == (row["total_error"] <= summary["levels"][0]["total_error"])
    matching = [r["sparsity"] for r in summary["levels"] if r["matching"] and r["level"] > 0]
    assert summary["extreme_sparsity"] == max(matching, default=0.0)
    assert summary["eval_size"] == 32 and summary["eval_pairs"] == 2


def test_pruned_weights_are_zero_and_biases_kept_in_every_level(imp_run: tuple[Path, dict]) -> None:
    out, _ = imp_run
    for level in (1, 2):
        model, _ = load_model(out / f"level_{level}")
        layers = prunable_layers(model, ["encoder", "transform", "decoder"])
        rewind = torch.load(out / "level_0" / "rewind.pt", weights_only=True)
        for name, mask in masks_of(out, level).items():
            assert mask.shape == layers[name].weight.shape  # masks cover weights only, never biases
            assert torch.all(layers[name].weight[~mask] == 0), name
            assert not torch.equal(layers[name].bias, rewind[f"{name}.bias"]), f"{name}.bias was not trained"
        # masks only ever shrink
        assert all(torch.all(masks_of(out, level - 1)[n] | ~m) for n, m in masks_of(out, level).items())


def test_rewinding_restores_the_rewind_point_under_the_mask(imp_run: tuple[Path, dict]) -> None:
    out, _ = imp_run
    cfg = tiny_config(out, **IMP)
    rewind = torch.load(out / "level_0" / "rewind.pt", weights_only=True)
    masks = masks_of(out, 1)
    start = initial_state(cfg, out, 1, masks)
    for name, mask in masks.items():
        key = f"{name}.weight"
        assert torch.equal(start[key][mask], rewind[key][mask])
        assert torch.all(start[key][~mask] == 0)
    assert all(torch.equal(start[k], rewind[k]) for k in rewind if k.endswith("bias"))
    # the rewind point is step 2 of the dense run: neither the initial nor the final weights
    torch.manual_seed(cfg.train.seed)
    initial = build(cfg.model).state_dict()
    final = load_model(out / "level_0")[0].state_dict()
    assert not torch.equal(rewind["decoder.1.weight"], initial["decoder.1.weight"])
    assert not torch.equal(rewind["decoder.1.weight"], final["decoder.1.weight"])


def test_report_renders(imp_run: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    out, _ = imp_run
    assert main(["report", str(out)]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3  # header + one row per level
    report = (out / "report" / "report.md").read_text()
    assert ("Extreme sparsity" in report or "No matching subnetwork" in report) and report.count("\n| ") == 4
    assert "held-out pairs at 32 px" in report
    for name in ("errors_vs_sparsity.png", "group_sparsity.png", "samples.png"):
        with Image.open(out / "report" / name) as img:
            img.verify()
            assert img.format == "PNG"
    with Image.open(out / "report" / "samples.png") as grid, Image.open(out / "level_0" / "samples.png") as row:
        assert grid.height >= 4 * row.height  # pairs, then one row per level


def test_no_matching_pruned_level_means_extreme_sparsity_zero(imp_run: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    from distst.prune.lottery import imp_summary
    from distst.reports import write_report

    out = tmp_path / "copy"
    shutil.copytree(imp_run[0], out)
    dense = json.loads(record_path(out, "level_0").read_text())["errors"]["total_error"]
    for level in (1, 2):  # every pruned level worse than the dense one
        path = record_path(out, f"level_{level}")
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "errors": {**record["errors"], "total_error": dense + level}}))
    summary = {"kind": "imp", **imp_summary(tiny_config(out, **IMP), step_records(out))}
    assert summary["levels"][0]["matching"] and summary["extreme_sparsity"] == 0.0  # level 0 does not count
    (out / "summary.json").write_text(json.dumps(summary))
    assert "**No matching subnetwork**" in write_report(out).read_text()


def test_report_of_a_non_imp_directory_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "no finished level" in capsys.readouterr().err


def test_random_pruning_keeps_per_layer_counts(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(out, **{**IMP, "prune__rounds": 1, "prune__control": "random_prune"})
    run_schedule(cfg, out)
    dense, _ = load_model(out / "level_0")
    ticket = prune_magnitude(dense, full_masks(dense, cfg.prune.scope), 0.2, 1, layerwise=False)
    random_masks = masks_of(out, 1)
    assert {n: int(m.sum()) for n, m in random_masks.items()} == {n: int(m.sum()) for n, m in ticket.items()}
    assert any(not torch.equal(random_masks[n], ticket[n]) for n in ticket)


def test_random_reinit_changes_the_unmasked_values(imp_run: tuple[Path, dict]) -> None:
    out, _ = imp_run
    masks = masks_of(out, 1)
    rewound = initial_state(tiny_config(out, **IMP), out, 1, masks)
    fresh = initial_state(tiny_config(out, **{**IMP, "prune__control": "random_reinit"}), out, 1, masks)
    for name, mask in masks.items():
        key = f"{name}.weight"
        assert not torch.equal(fresh[key][mask], rewound[key][mask]), name
        assert torch.all(fresh[key][~mask] == 0)


def test_one_shot_prunes_straight_to_the_final_sparsity(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(out, **{**IMP, "prune__rounds": 3, "prune__control": "one_shot", "train__steps": 2,
                              "prune__rewind_step": 0})
    assert planned_levels(cfg) == [0, 1]
    summary = run_schedule(cfg, out).summary
    assert summary["levels"][1]["sparsity"] == pytest.approx(1 - 0.8**3, abs=1e-5)
    assert not (out / "level_2").exists()


def test_imp_config_errors(tmp_path: Path) -> None:
    from distst.config import ConfigError

    with pytest.raises(ConfigError, match="rewind_step=9 lies beyond train.steps=4"):
        run_schedule(tiny_config(tmp_path, **{**IMP, "prune__rewind_step": 9}), tmp_path)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(("zero_stage", "precision"), [(1, "fp32"), (2, "fp32"), (0, "bf16"), (1, "bf16")])
def test_masks_hold_in_fp32_master_weights_and_moments_across_two_gloo_processes(tmp_path: Path, zero_stage: int,
                                                                               precision: str) -> None:
    """Masks tightened mid-run (at step 2) must hold in the optimizer's own fp32 copies from step 3 on."""
    from distst.train.engine import free_port

    reports = tmp_path / "reports"
    reports.mkdir()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", str(REPO / "tests" / "workers" / "train_worker.py"),
                           str(tmp_path / "run"), str(reports), "mask_rate=0.5", "tighten_at=2",
                           "model.encoder=trainable", "prune.method=imp", "train.steps=4",
                           f"deepspeed.zero_stage={zero_stage}", f"deepspeed.precision={precision}"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=patience(300))
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["losses"] != ranks[1]["losses"]
    assert [r["masked_nonzero"] for r in ranks] == [0, 0]
    assert [r["masked_optimizer_nonzero"] for r in ranks] == [0, 0]
    assert all(r["inspected"] == [r["masks"]] * 4 for r in ranks), "some masked tensor was never read"


@pytest.mark.slow
def test_sigkill_in_level_1_then_resume_gives_the_same_masks(tmp_path: Path) -> None:
    import time

    job = write_job(tmp_path / "job.yaml")
    settings = {**IMP, "train__deterministic": "true", "train__steps": 4}
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    run_distst("imp", str(job), *tiny_overrides(clean, **settings))

    proc = subprocess.Popen(distst_command("imp", str(job), *tiny_overrides(killed, **settings)), cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marker = killed / "level_1" / "checkpoints" / "step_00000002" / "state.pt"
    deadline = time.monotonic() + patience(240)
    while not marker.is_file():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "level 1 never reached its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=patience(30))
    assert not record_path(killed, "level_1").exists()
    level0_metrics = record_path(killed, "level_0").read_text()

    run_distst("imp", str(job), *tiny_overrides(killed, **settings))
    assert record_path(killed, "level_0").read_text() == level0_metrics  # the finished level was not redone
    for level in (0, 1, 2):
        a, b = masks_of(clean, level), masks_of(killed, level)
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), f"masks of level {level} differ"
    final_a = load_model(clean / "level_2")[0].state_dict()
    final_b = load_model(killed / "level_2")[0].state_dict()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert json.loads((killed / "summary.json").read_text())["levels"] == \
        json.loads((clean / "summary.json").read_text())["levels"]


def test_report_table_shows_sanet_identity_error() -> None:
    from distst.reports.imp import markdown_table

    level = {"level": 0, "sparsity": 0.0, "sparsity_groups": {"encoder": 0.0}, "content_error": 1.0,
             "style_error": 2.0, "identity_error": 3.0, "total_error": 6.0, "steps": 4, "wall_s": 1.0}
    table = markdown_table({"levels": [{"level": 0, "matching": True}]}, [level]).splitlines()
    assert "identity error" in table[0] and "| 3 | 6 | yes |" in table[2]
