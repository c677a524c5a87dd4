"""distst bench latency: model files and exported ONNX graphs side by side, ratios to the first entry,
parameters and MACs from the model, E from the files beside them, JSON; bad inputs as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distst.bench import latency as bench_latency
from distst.cli import main
from distst.config import model_section
from distst.export import export_model
from distst.models import build, param_counts
from distst.models.complexity import macs
from distst.models.io import save_model


def test_median_ms_excludes_warm_up_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # perf_counter readings (s): two timed runs of 0.010 s and 0.030 s and one of 0.020 s after a warm-up.
    clock = iter([0.0, 0.010, 1.0, 1.030, 2.0, 2.020])
    monkeypatch.setattr(bench_latency.time, "perf_counter", lambda: next(clock))
    calls = []
    assert bench_latency.median_ms(lambda: calls.append(1), repeats=3, warmup=2) == pytest.approx(20.0)
    assert len(calls) == 5


def test_latency_of_a_model_file_and_its_onnx_graph(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build(model_section(name="adain", width=0.125))
    run_dir = tmp_path / "run"
    model_file = save_model(model, run_dir / "model.pt")
    (run_dir / "summary.json").write_text(json.dumps({"final": {"total_error": 12.5}}))
    export_model(model_file, tmp_path / "onnx")
    out = tmp_path / "latency.json"
    assert main(["bench", "latency", "--checkpoint", str(run_dir), "--checkpoint", str(tmp_path / "onnx" / "forward.onnx"),
                 "--size", "40", "--style-size", "24", "--repeats", "2", "--warmup", "1", "--threads", "1",
                 "--profile", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    torch_row, onnx_row = report["rows"]
    assert [torch_row["runtime"], onnx_row["runtime"]] == ["torch", "onnx fp32"]
    assert torch_row["speedup"] == 1.0 and onnx_row["speedup"] == pytest.approx(torch_row["full_ms"] / onnx_row["full_ms"])
    assert onnx_row["smaller"] == pytest.approx(model_file.stat().st_size / (tmp_path / "onnx" / "forward.onnx").stat().st_size)
    for row in (torch_row, onnx_row):
        assert row["params"] == param_counts(model)["total"]
        assert row["macs"] == macs(model, 40, 24)["total"]
        assert row["full_ms"] > 0 and row["cached_ms"] > 0
        assert row["error"] == 12.5  # the run's E: the fp32 graph is the same network
        assert row["error_from"] == str(run_dir / "summary.json")
    assert torch_row["file_bytes"] == model_file.stat().st_size
    profile = onnx_row["extra"]["profile_ms"]  # ONNX Runtime's time per operator type
    # Every operator type of the graph is timed (Conv may show as ORT's FusedConv); the order is by time, which
    # a loaded machine may shuffle, so it is not asserted.
    assert any("Conv" in op for op in profile) and {"Pad", "MaxPool"} <= set(profile)
    assert all(ms >= 0 for ms in profile.values())


def test_the_table_says_when_e_comes_from_files_that_measure_it_differently(capsys: pytest.CaptureFixture) -> None:
    def row(label: str, error_from: str) -> bench_latency.Row:
        return bench_latency.Row(label, "torch", 2.0, 1.0, 10, 100, 1000, error=1.0, error_from=error_from)

    bench_latency.print_rows([row("a", "run/summary.json"), row("b", "run/summary.json")], "one source")
    assert "different pairs" not in capsys.readouterr().out
    bench_latency.print_rows([row("a", "run/summary.json"), row("b", "onnx/int8_report.json")], "two sources")
    note = " ".join(capsys.readouterr().out.split())
    assert "E is read from 2 files that may measure it on different pairs and sizes: onnx/int8_report.json, " \
           "run/summary.json" in note


def test_bad_entries_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "latency", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"not a graph")
    assert main(["bench", "latency", "--checkpoint", str(foreign), "--size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "manifest.json" in err


@pytest.mark.slow
def test_bench_table_rows_share_one_error_measure(tmp_path: Path) -> None:
    """dense (torch, ONNX), a slimmed model (torch, ONNX fp32, int8): every E on the same held-out pairs with the
    same loss VGG, so the torch and fp32 graph rows of one model agree."""
    from distst.prune.channels import slim
    from distst.prune.channels.runner import write_random_loss_vgg

    torch.manual_seed(0)
    dense = build(model_section(name="adain", width=0.125))
    dense_file = save_model(dense, tmp_path / "dense.pt")
    layers = dense.channel_layers()
    kept = {"encoder": {"conv4_1": list(range(0, layers["encoder"]["conv4_1"].out_channels, 2))}}
    slim_file = save_model(slim(dense, kept), tmp_path / "slim.pt")
    vgg = write_random_loss_vgg(tmp_path / "loss_vgg.pth", 0.125, seed=0)
    out = tmp_path / "table.json"
    assert main(["bench", "table", "--dense", str(dense_file), "--slim", str(slim_file), "--vgg", str(vgg),
                 "--sizes", "32/32", "--repeats", "1", "--warmup", "0", "--threads", "1", "--work", str(tmp_path / "w"),
                 "--json", str(out), "--markdown", str(tmp_path / "table.md")]) == 0
    rows = json.loads(out.read_text())["32/32"]
    assert [r["runtime"] for r in rows] == ["torch", "onnx fp32", "torch", "onnx fp32", "onnx int8"]
    assert rows[0]["error"] == pytest.approx(rows[1]["error"], rel=1e-4)  # dense: torch == its fp32 graph
    assert rows[2]["error"] == pytest.approx(rows[3]["error"], rel=1e-4)  # slimmed: torch == its fp32 graph
    assert rows[4]["error"] == pytest.approx(rows[3]["error"], rel=0.1)  # int8 stays near fp32
    assert rows[2]["params"] < rows[0]["params"]
    assert "| slimmed 1 | onnx int8 |" in (tmp_path / "table.md").read_text()
    temporal = [r["extra"]["temporal_error"] for r in rows]  # the same synthetic clips and styles, each runtime
    assert temporal[0] == pytest.approx(temporal[1], rel=1e-3, abs=1e-9)
    assert temporal[2] == pytest.approx(temporal[3], rel=1e-3, abs=1e-9)
    assert "temporal error" in (tmp_path / "table.md").read_text()
