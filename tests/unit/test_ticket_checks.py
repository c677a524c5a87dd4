"""Transferred tickets (``prune.method=transfer``) without training: the config, and the one-line refusals of a source
that does not fit (another model, another width, a dense level, no mask) in the preflight ``distst check`` runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_config

from distst.cli import main
from distst.config import ConfigError, build_config
from distst.models import create
from distst.preflight import problems
from distst.prune.masks import full_masks, mask_mismatch, masked_state, prune_magnitude
from distst.prune.transfer import TransferSchedule, ticket_problems


def fake_level(root: Path, level: int = 1, **model: object) -> Path:
    """RUN_DIR/level_<level> of an IMP run as a finished pruning step leaves it: its config.yaml and mask.pt (half of
    the decoder pruned by magnitude) and the run's level_0/rewind.pt."""
    cfg = tiny_config(root, prune__method="imp", **{f"model__{k}": v for k, v in model.items()})
    torch.manual_seed(0)
    net = create(cfg.model, weights=False)
    folder = root / f"level_{level}"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(cfg.to_yaml())
    masks = full_masks(net, ["decoder"]) if level == 0 else prune_magnitude(net, full_masks(net, ["decoder"]), 0.5, 1,
                                                                             layerwise=False)
    torch.save(masks, folder / "mask.pt")
    (root / "level_0").mkdir(exist_ok=True)
    torch.save(net.state_dict(), root / "level_0" / "rewind.pt")
    return folder


def transfer_config(out: Path, source: Path, **extra: object):  # noqa: ANN201
    return tiny_config(out, prune__method="transfer", prune__transfer_from=str(source), **extra)


def refusal(out: Path, source: Path, **extra: object) -> str:
    found = ticket_problems(transfer_config(out, source, **extra), out)
    assert len(found) == 1, found
    assert "\n" not in found[0]
    return found[0]


def test_the_section_and_its_defaults(tmp_path: Path) -> None:
    cfg = transfer_config(tmp_path / "run", tmp_path / "src" / "level_1")
    assert (cfg.prune.transfer_weights, cfg.prune.compare_with, cfg.model.encoder) == ("rewind", None, "trainable")
    assert cfg.prune.schedule_class is TransferSchedule
    with pytest.raises(ConfigError, match="transfer_from"):
        build_config({}, ["prune.method=transfer"])
    with pytest.raises(ConfigError, match="transfer_weights"):
        transfer_config(tmp_path, tmp_path, prune__transfer_weights="fresh")
    with pytest.raises(ConfigError, match="prune.rate: unknown key"):  # IMP's keys are not a transfer's
        transfer_config(tmp_path, tmp_path, prune__rate=0.2)


def test_a_fitting_source_has_no_problem(tmp_path: Path) -> None:
    source = fake_level(tmp_path / "src")
    assert ticket_problems(transfer_config(tmp_path / "run", source), tmp_path / "run") == []


def test_a_mask_of_another_model_is_refused_in_one_line(tmp_path: Path) -> None:
    source = fake_level(tmp_path / "src", name="sanet")
    assert refusal(tmp_path / "run", source) == (f"prune.transfer_from={source}: its mask is of model sanet, "
                                                 "this run is adain")


def test_a_mask_of_another_width_names_the_first_tensor_that_differs(tmp_path: Path) -> None:
    source = fake_level(tmp_path / "src", width=0.25)
    line = refusal(tmp_path / "run", source)
    assert line.startswith(f"prune.transfer_from={source}: its mask of decoder.")
    assert "has shape (64, 128, 3, 3), this run's" in line and "(32, 64, 3, 3)" in line
    assert line.endswith("model.width: 0.25 there, 0.125 here")


def test_a_dense_level_a_missing_mask_and_a_non_level_are_refused(tmp_path: Path) -> None:
    dense = fake_level(tmp_path / "src", level=0)
    assert "the dense level (no weight pruned)" in refusal(tmp_path / "run", dense)
    (dense.parent / "level_2").mkdir()
    assert refusal(tmp_path / "run", dense.parent / "level_2").endswith(
        "no mask.pt there (the level's pruning step has not run)")
    assert "is not a level directory" in refusal(tmp_path / "run", dense.parent)
    assert "does not exist" in refusal(tmp_path / "run", tmp_path / "nowhere" / "level_1")


def test_rewound_weights_that_are_missing_are_refused(tmp_path: Path) -> None:
    source = fake_level(tmp_path / "src")
    (source.parent / "level_0" / "rewind.pt").unlink()
    assert "prune.transfer_weights=rewind:" in refusal(tmp_path / "run", source)
    assert ticket_problems(transfer_config(tmp_path / "run", source, prune__transfer_weights="init"), tmp_path) == []


def test_a_comparison_of_another_model_is_refused(tmp_path: Path) -> None:
    source, other = fake_level(tmp_path / "src"), fake_level(tmp_path / "other", name="sanet")
    line = refusal(tmp_path / "run", source, prune__compare_with=str(other))
    assert line == f"prune.compare_with={other}: its mask is of model sanet, this run is adain"


def test_distst_check_runs_the_same_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = fake_level(tmp_path / "src", name="sanet")
    cfg = transfer_config(tmp_path / "run", source)
    assert any("its mask is of model sanet" in line for line in problems(cfg, tmp_path / "run", world_size=1))
    job = tmp_path / "job.yaml"
    job.write_text(cfg.to_yaml())
    assert main(["check", str(job)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("its mask is of model sanet, this run is adain")


def test_a_run_that_copied_its_ticket_no_longer_reads_the_source(tmp_path: Path) -> None:
    source, out = fake_level(tmp_path / "src"), tmp_path / "run"
    (out / "steps").mkdir(parents=True)
    (out / "steps" / "ticket_mask.json").write_text("{}")
    import shutil

    shutil.rmtree(source.parent)  # moved away after the copy: a resume must still start
    assert ticket_problems(transfer_config(out, source), out) == []


def test_mask_helpers() -> None:
    cfg = tiny_config(Path("unused"))
    net = create(cfg.model, weights=False)
    masks = prune_magnitude(net, full_masks(net, ["decoder"]), 0.5, 1, layerwise=False)
    assert mask_mismatch(masks, net) is None
    assert "not a boolean mask" in mask_mismatch({k: m.float() for k, m in masks.items()}, net)
    assert "which this adain has not" in mask_mismatch({"decoder.99": next(iter(masks.values()))}, net)
    state = masked_state(net.state_dict(), masks)
    for name, mask in masks.items():
        assert torch.all(state[f"{name}.weight"][~mask] == 0)
        assert torch.equal(state[f"{name}.weight"][mask], net.state_dict()[f"{name}.weight"][mask])
