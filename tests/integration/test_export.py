"""ONNX export: torch == ONNX Runtime at two input sizes, the cached-style pair == the single graph, the
manifest, int8 graphs that really hold int8 weights and stay close to fp32, and bad inputs as one line."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from helpers import SAMPLE, SLIM_ADAIN

from distst.cli import main
from distst.config import model_section
from distst.export import export_model
from distst.export.errors import compare_errors
from distst.export.quantize import (
    Calibration,
    int8_weight_count,
    quantize_export,
    read_calibration,
    relative_error,
)
from distst.export.runtime import OnnxStylizer
from distst.models import StyleTransferModel, build
from distst.models.io import load_model, save_model
from distst.models.stats import calc_mean_std

CONTENT = f"{SAMPLE}/content-{{000000..000001}}.tar"
STYLE = f"{SAMPLE}/style-{{000000..000001}}.tar"
# Content and style sizes (H, W) unlike the export's examples and each other; the second not multiples of 8
# where the model takes any size (rounded up to the model's input multiple otherwise).
SIZES = [((64, 48), (48, 80)), ((72, 100), (56, 40))]
TOLERANCE = 1e-4


def _model_file(tmp: Path, name: str, **section: object) -> Path:
    torch.manual_seed(0)
    return save_model(build(model_section(name=name, width=0.125, **section)), tmp / f"{name}.pt")


def _round_trip(model_file: Path, out: Path) -> None:
    model, _ = load_model(model_file)
    model.eval()
    runner = OnnxStylizer(out)
    m = model.input_multiple
    for sizes in SIZES:
        (ch, cw), (sh, sw) = ((max(-(-side // m) * m, model.min_size) for side in pair) for pair in sizes)
        content, style = torch.rand(1, 3, ch, cw), torch.rand(1, 3, sh, sw)
        with torch.no_grad():
            expected = model(content, style)
        whole = runner.forward(content, style)
        assert whole.shape == expected.shape
        assert float((whole - expected).abs().max()) < TOLERANCE
        cached = runner.stylize_cached(content, runner.style_inputs(style))
        assert float((cached - whole).abs().max()) < 1e-6  # the pair is the single graph cut in two


@pytest.fixture(scope="module")
def adain_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 1/8-width AdaIN exported by the command, with int8 graphs calibrated on the sample shards."""
    tmp = tmp_path_factory.mktemp("adain")
    model_file = _model_file(tmp, "adain")
    code = main(["export", str(model_file), "--out", str(tmp / "onnx"), "--int8", "--calibration", CONTENT,
                 "--calibration-style", STYLE, "--calibration-pairs", "4", "--eval-pairs", "2", "--size", "64"])
    assert code == 0
    return model_file, tmp / "onnx"


def test_adain_onnx_equals_torch_at_two_sizes_and_the_cached_pair_equals_it(adain_export) -> None:  # noqa: ANN001
    _round_trip(*adain_export)


def test_adain_caches_the_styles_relu4_1_mean_and_std(adain_export) -> None:  # noqa: ANN001
    model_file, out = adain_export
    model, _ = load_model(model_file)
    style = torch.rand(1, 3, 40, 56)
    cached = OnnxStylizer(out).style_inputs(style)
    mean, std = calc_mean_std(model.encoder(style)[-1])
    assert set(cached) == {"style_mean", "style_std"}
    assert torch.allclose(torch.from_numpy(cached["style_mean"]), mean.detach(), atol=1e-5)
    assert torch.allclose(torch.from_numpy(cached["style_std"]), std.detach(), atol=1e-5)


def test_manifest_names_inputs_outputs_ranges_multiples_and_the_plan(adain_export) -> None:  # noqa: ANN001
    model_file, out = adain_export
    model, _ = load_model(model_file)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["plan"] == model.plan and manifest["input_multiple"] == model.input_multiple
    assert [i["name"] for i in manifest["graphs"]["stylize"]["inputs"]] == ["content", "style_mean", "style_std"]
    assert manifest["graphs"]["forward"]["inputs"][0]["range"] == [0.0, 1.0]
    for variant in ("fp32", "int8"):
        for role, name in manifest["variants"][variant].items():
            graph = onnx.load(str(out / name)).graph
            assert [i.name for i in graph.input] == [i["name"] for i in manifest["graphs"][role]["inputs"]]
            assert [o.name for o in graph.output] == [o["name"] for o in manifest["graphs"][role]["outputs"]]
            height = graph.input[0].type.tensor_type.shape.dim[2]
            assert height.dim_param and not height.dim_value  # dynamic height (and width)


def test_int8_graphs_hold_int8_weights_and_stay_close_to_fp32(adain_export) -> None:  # noqa: ANN001
    model_file, out = adain_export
    model, _ = load_model(model_file)
    fp32_graph, int8_graph = out / "forward.onnx", out / "forward.int8.onnx"
    ops = {node.op_type for node in onnx.load(str(int8_graph)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    conv_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert int8_weight_count(fp32_graph) == 0 and int8_weight_count(int8_graph) == conv_weights
    assert int8_graph.stat().st_size < 0.5 * fp32_graph.stat().st_size
    # Calibration-like inputs: held-out images of the same shards, after the calibration ones.
    calib = read_calibration(CONTENT, STYLE, 2, 64, skip=4)
    fp32, int8 = OnnxStylizer(out, "fp32"), OnnxStylizer(out, "int8")
    for i in range(2):
        content, style = calib.content[i:i + 1], calib.style[i:i + 1]
        reference = fp32.forward(content, style)
        assert relative_error(int8.forward(content, style), reference) < 0.05  # stated tolerance: 5% mean abs
        cached = int8.stylize_cached(content, int8.style_inputs(style))
        assert relative_error(cached, reference) < 0.05
    report = json.loads((out / "int8_report.json").read_text())
    errors = report["errors"]
    assert errors["fp32"]["total_error"] == pytest.approx(errors["torch"]["total_error"], rel=1e-4)
    assert errors["int8"]["total_error"] == pytest.approx(errors["fp32"]["total_error"], rel=0.05)
    assert report["file_bytes"]["int8"]["forward"] == int8_graph.stat().st_size


def test_a_slimmed_model_exports_with_its_plan(tmp_path: Path) -> None:
    model_file = _model_file(tmp_path, "adain", plan=SLIM_ADAIN)
    manifest = export_model(model_file, tmp_path / "onnx")
    assert manifest["model"]["plan"]["encoder"]["conv4_1"] == 40
    _round_trip(model_file, tmp_path / "onnx")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sanet", "mccnet", "manet", "lst", "adaattn"])
def test_other_models_onnx_equals_torch_and_their_cached_pair(tmp_path: Path, name: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    model_file = _model_file(tmp_path, name)
    manifest = export_model(model_file, tmp_path / "onnx")
    model, _ = load_model(model_file)
    assert isinstance(model, StyleTransferModel)
    assert manifest["style_cache"]["taps"] == {"sanet": ["relu4_1", "relu5_1"], "mccnet": ["relu4_1"],
                                               "manet": ["relu4_1"], "lst": ["relu4_1"],
                                               "adaattn": ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]}[name]
    _round_trip(model_file, tmp_path / "onnx")
    # int8 (SANet's attention reshapes defeat ORT's symbolic shape inference: the fallback must take over), and
    # E with identity terms, the forward answered by each graph: fp32's is torch's, int8's near it.
    calibration = read_calibration(CONTENT, STYLE, 4, 32)  # 32 px: AdaAttN attends over every position
    quantize_export(tmp_path / "onnx", Calibration(calibration.content[:2], calibration.style[:2]))
    errors = compare_errors(model_file, tmp_path / "onnx", calibration.content[2:], calibration.style[2:])
    pair = calibration.content[2:], calibration.style[2:]
    assert set(errors["torch"]) == {*model.errors(*pair, model.loss_network()), "total_error"}
    assert errors["fp32"] == pytest.approx(errors["torch"], rel=1e-4)
    assert errors["int8"]["total_error"] == pytest.approx(errors["fp32"]["total_error"], rel=0.05)
    assert not any(cwd.iterdir())  # nothing left in the working directory (ORT's failed-inference dump)


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str], expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_bad_inputs_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    _one_line_error(capsys, ["export", str(foreign), "--out", str(tmp_path / "a")], "is not a distst model file")
    model_file = _model_file(tmp_path, "adain")
    _one_line_error(capsys, ["export", str(model_file), "--out", str(tmp_path / "b"), "--opset", "12"],
                    "--opset 12 is not supported")
    _one_line_error(capsys, ["export", str(model_file), "--out", str(tmp_path / "c"), "--int8", "--calibration",
                             str(tmp_path / "held-out-{000..001}.tar")], "does not exist")
    _one_line_error(capsys, ["export", str(model_file), "--out", str(tmp_path / "d"), "--int8"],
                    "--int8 needs --calibration")
    assert not (tmp_path / "c").exists()  # nothing written before the calibration shards were found
