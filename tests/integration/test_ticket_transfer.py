"""A lottery ticket transferred to another style set (``prune.method=transfer``) and to another CycleGAN task: the
source's mask exactly, held fixed through training, the chosen starting weights, a bitwise resume, the report, and
``distst imp`` on a job that names the method."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import REPO, SAMPLE, run_distst, tiny_config, tiny_overrides
from test_stale_outputs import StopInLevel  # stops once a folder's training has begun

from distst.cli import main
from distst.models.io import load_model
from distst.prune import prunable_layers, run_schedule, sparsity_report
from distst.prune.transfer import TransferSchedule
from distst.records import record_path

IMP = {"prune__method": "imp", "prune__rounds": 1, "prune__rewind_step": 2, "model__encoder": "trainable"}
BRUSH_MOSAIC, STRIPES_TEXTURES = f"{SAMPLE}/style-000000.tar", f"{SAMPLE}/style-000001.tar"  # disjoint style sets
#: Deterministic, so that a stopped and resumed transfer is compared bitwise with the uninterrupted one.
TRANSFER = {"prune__method": "transfer", "data__style": STRIPES_TEXTURES, "train__deterministic": "true"}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread for these tiny runs: on a CPU shared with other work, two threads per process make them
    several times slower (measured), and nothing here needs more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def masks_of(level: Path) -> dict[str, torch.Tensor]:
    return torch.load(level / "mask.pt", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """IMP on the brush and mosaic styles (the source), IMP on the stripes and textures (the comparison), and the
    source's level-1 ticket trained on the stripes and textures."""
    root = tmp_path_factory.mktemp("transfer")
    paths = {"source": root / "source", "target": root / "target", "ticket": root / "ticket"}
    for name, style in (("source", BRUSH_MOSAIC), ("target", STRIPES_TEXTURES)):
        run_schedule(tiny_config(paths[name], **IMP, data__style=style), paths[name])
    cfg = tiny_config(paths["ticket"], **TRANSFER, prune__transfer_from=str(paths["source"] / "level_1"),
                      prune__compare_with=str(paths["target"] / "level_1"))
    assert not run_schedule(cfg, paths["ticket"]).stopped
    return paths


def test_the_ticket_is_the_source_level_mask_exactly(runs: dict[str, Path]) -> None:
    source, copied = masks_of(runs["source"] / "level_1"), masks_of(runs["ticket"] / "ticket")
    assert source.keys() == copied.keys() and all(torch.equal(source[n], copied[n]) for n in source)
    record = json.loads(record_path(runs["ticket"], "ticket").read_text())
    assert record["sparsity_layers"] == sparsity_report(source)["layers"]  # per tensor
    assert record["sparsity"] == json.loads(record_path(runs["source"], "level_1").read_text())["sparsity"]


def test_the_mask_holds_through_training(runs: dict[str, Path]) -> None:
    model, _ = load_model(runs["ticket"] / "ticket")
    layers = prunable_layers(model, ["encoder", "decoder"])
    masks = masks_of(runs["ticket"] / "ticket")
    rewind = torch.load(runs["source"] / "level_0" / "rewind.pt", weights_only=True)
    for name, mask in masks.items():
        weight = layers[name].weight.detach()
        assert torch.equal(weight == 0, ~mask), f"{name}: the trained zeros are not exactly the mask's"
        assert not torch.equal(weight, rewind[f"{name}.weight"] * mask), f"{name} did not train"
    assert json.loads(record_path(runs["ticket"], "ticket").read_text())["off_mask_nonzero"] == 0


def test_the_ticket_starts_from_the_source_rewind_point(runs: dict[str, Path]) -> None:
    cfg = tiny_config(runs["ticket"], **TRANSFER, prune__transfer_from=str(runs["source"] / "level_1"),
                      prune__compare_with=str(runs["target"] / "level_1"))
    start = TransferSchedule(cfg, runs["ticket"]).steps()[1].init_state()
    rewind = torch.load(runs["source"] / "level_0" / "rewind.pt", weights_only=True)
    masks = masks_of(runs["ticket"] / "ticket")
    assert start.keys() == rewind.keys()
    for key, value in rewind.items():
        mask = masks.get(key.removesuffix(".weight")) if key.endswith(".weight") else None
        assert torch.equal(start[key], value if mask is None else value * mask), key


def test_init_starts_from_this_run_s_own_initialisation_and_trained_from_the_source_level(
        runs: dict[str, Path], tmp_path: Path) -> None:
    source = runs["source"] / "level_1"
    cfg = tiny_config(tmp_path / "trained", **TRANSFER, prune__transfer_from=str(source),
                      prune__transfer_weights="trained")
    trained = load_model(source)[0].state_dict()
    start = TransferSchedule(cfg, tmp_path / "trained")
    (tmp_path / "trained" / "ticket").mkdir(parents=True)
    start.steps()[0].prune(tmp_path / "trained" / "ticket", [])  # the copy step, alone
    assert all(torch.equal(v, trained[k]) for k, v in start.steps()[1].init_state().items())  # already masked there

    out = tmp_path / "init"
    cfg = tiny_config(out, **TRANSFER, prune__transfer_from=str(source), prune__transfer_weights="init",
                      train__steps=2)
    assert TransferSchedule(cfg, out).steps()[1].init_state is None  # the model's own initialisation
    summary = run_schedule(cfg, out).summary
    assert summary["transfer_weights"] == "init" and summary["ticket"]["off_mask_nonzero"] == 0
    assert not (out / "ticket" / "start.pt").exists()


def test_a_stopped_transfer_resumes_bitwise(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(out, **TRANSFER, prune__transfer_from=str(runs["source"] / "level_1"),
                      prune__compare_with=str(runs["target"] / "level_1"))
    assert run_schedule(cfg, out, stop=StopInLevel(out / "ticket")).stopped
    assert record_path(out, "ticket_mask").is_file() and not record_path(out, "ticket").exists()
    assert not run_schedule(cfg, out).stopped
    clean = load_model(runs["ticket"] / "ticket")[0].state_dict()
    resumed = load_model(out / "ticket")[0].state_dict()
    assert all(torch.equal(clean[k], resumed[k]) for k in clean), "the resumed ticket differs"


def test_summary_and_report_name_the_source_and_the_comparison(runs: dict[str, Path],
                                                                capsys: pytest.CaptureFixture) -> None:
    out = runs["ticket"]
    summary = json.loads((out / "summary.json").read_text())
    source = summary["source"]
    assert (summary["kind"], summary["complete"], source["level"], source["model"]) == ("transfer", True, 1, "adain")
    assert source["path"] == str(runs["source"] / "level_1") and source["data"]["style"] == BRUSH_MOSAIC
    assert summary["data"]["style"] == STRIPES_TEXTURES
    compared = summary["compare"]
    assert compared["finished"] and compared["sparsity"] == pytest.approx(summary["ticket"]["sparsity"])
    dense = json.loads(record_path(runs["target"], "level_0").read_text())["errors"]["total_error"]
    assert compared["dense_total_error"] == dense
    assert summary["matching"] == (summary["ticket"]["total_error"] <= dense)

    assert main(["report", str(out)]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3 and "transferred ticket" in table[1] and "target's own ticket" in table[2]
    report = (out / "report" / "report.md").read_text()
    assert f"level 1 of `{runs['source']}`" in report and "**adain**" in report
    assert f"**{source['sparsity']:.2%}** sparse" in report and "style-000000.tar" in report
    assert "matching**" in report and (out / "report" / "transfer.png").is_file()


def test_distst_imp_runs_the_shipped_job_which_names_the_method(runs: dict[str, Path], tmp_path: Path) -> None:
    """``jobs/local/staged/transfer_adain.yaml`` as shipped, at the tiny size, pointed at this module's runs."""
    proc = run_distst("imp", str(REPO / "jobs" / "local" / "staged" / "transfer_adain.yaml"),
                      *tiny_overrides(tmp_path / "run", train__steps=2, data__style=STRIPES_TEXTURES,
                                      prune__transfer_from=runs["source"] / "level_1",
                                      prune__compare_with=runs["target"] / "level_1"))
    assert "transferred ticket trained" in proc.stdout and f"from level 1 of {runs['source']}" in proc.stdout
    assert "against the target's dense" in proc.stdout


def test_a_cyclegan_ticket_transfers_to_the_reversed_task(tmp_path: Path) -> None:
    """Photos to paintings and back (the source), then the same generators' ticket on paintings to photos."""
    gan = {"model__name": "cyclegan", "model__width": 0.0625, "model__blocks": 1, "model__pool_size": 2,
           "model__feature_extractor": "random_conv", "model__fid_images": 4, "train__steps": 2,
           "train__eval_every": 2, "train__checkpoint_every": 2}
    source = tmp_path / "source"
    run_schedule(tiny_config(source, **gan, prune__method="imp", prune__rounds=1), source)
    out = tmp_path / "ticket"
    reversed_task = {"data__content": f"{SAMPLE}/style-{{000000..000001}}.tar",
                     "data__style": f"{SAMPLE}/content-{{000000..000001}}.tar"}
    summary = run_schedule(tiny_config(out, **gan, **reversed_task, prune__method="transfer",
                                       prune__transfer_from=str(source / "level_1")), out).summary
    assert summary["verdict"] == "fid" and "fid" in summary["ticket"]
    assert summary["ticket"]["sparsity_groups"] == {"generator": pytest.approx(0.2, abs=1e-3)}
    assert summary["ticket"]["off_mask_nonzero"] == 0
    model, _ = load_model(out / "ticket")
    source_masks = masks_of(source / "level_1")
    layers = prunable_layers(model, ["generator"])
    assert all(torch.equal(layers[n].weight.detach() == 0, ~m) for n, m in source_masks.items())
