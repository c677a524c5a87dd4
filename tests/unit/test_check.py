"""``distst check``: a job's files and sizes are checked before anything starts, one readable line each."""

from __future__ import annotations

import pytest
from helpers import REPO

from distst.cli import main


def test_the_local_jobs_pass(capsys: pytest.CaptureFixture) -> None:
    jobs = sorted((REPO / "jobs" / "local").glob("*.yaml"))
    assert {"adain", "sanet", "mccnet", "imp_adain", "imp_sanet", "l2_adain", "iccp_adain", "iccp_mccnet",
            "cpst_adain"} <= {job.stem for job in jobs}
    for job in jobs:
        assert main(["check", str(job)]) == 0, job
    assert capsys.readouterr().out.count(": ok (") == len(jobs)


def test_missing_shards_and_weights_are_each_named(tmp_path, capsys: pytest.CaptureFixture) -> None:
    code = main(["check", str(REPO / "jobs" / "local" / "adain.yaml"),
                 f"data.content={tmp_path}/c-{{000000..000002}}.tar", f"model.vgg_weights={tmp_path}/vgg.pth"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"data.content: shard {tmp_path}/c-000000.tar does not exist (and 2 more)" in err
    assert f"model.vgg_weights: {tmp_path}/vgg.pth does not exist" in err
    assert "data.style" not in err  # the bundled style shards exist


def test_sizes_follow_the_models_own_rules(capsys: pytest.CaptureFixture) -> None:
    assert main(["check", str(REPO / "jobs" / "local" / "sanet.yaml"), "data.crop=40"]) == 2
    assert "data.crop=40: sanet needs sizes of at least 32 that are multiples of 16" in capsys.readouterr().err
    assert main(["check", str(REPO / "jobs" / "local" / "adain.yaml"), "data.crop=40"]) == 0


def test_an_unreadable_init_from_is_one_line(tmp_path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a torch file")
    assert main(["check", str(REPO / "jobs" / "local" / "adain.yaml"), f"model.init_from={bad}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"model.init_from: {bad} is not a readable distst model file" in err[0], err
