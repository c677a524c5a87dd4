"""The bf16 path every GPU run takes (``deepspeed.precision: auto`` is bf16 on GPUs), run here on DeepSpeed's CPU
accelerator with 2 gloo ranks: every method at ZeRO-1, IMP also at ZeRO-0 (masks at ZeRO-0/1 in ``test_imp``). Each test asserts the
property bf16 used to break: the model file is the fp32 masters and reproduces the reported E, sparsities are
exact with zeros in the file, ICCP's scales come from the masters, CPST's gradients are non-zero, QAT's
weights lie on the int8 grid and its observers rest during evaluation. Masks in the masters and moments, and a
bitwise resume, are tested with the same workers as fp32 (``test_imp``, below)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, on_int8_grid, patience, run_distst, subprocess_env, tiny_overrides, write_job

from distst.config import build_config
from distst.data import eval_pairs
from distst.evaluate import evaluate
from distst.models.io import load_model, read_model_file
from distst.prune.channels.regularisers import channel_activity, channel_loss, xor_loss
from distst.prune.masks import remaining_target
from distst.train.loop import build_for_training

BF16 = ("deepspeed.precision=bf16", "--nproc", "2")


def error_from_file(run_dir: Path) -> float:
    """E of ``run_dir/model.pt`` recomputed in this process with the run's own loss network and held-out pairs."""
    cfg = build_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    torch.manual_seed(cfg.train.seed)  # the loss network is built as the run built it
    _, loss_net = build_for_training(cfg)
    model, _ = load_model(run_dir / "model.pt")
    content, style = eval_pairs(cfg.data)
    return evaluate(model, loss_net, content, style)["total_error"]


def fp32_values(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every floating-point value of ``state``, checked to be stored in fp32."""
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
    return torch.cat([v.flatten() for v in state.values() if v.is_floating_point()])


def mostly_off_the_bf16_grid(values: torch.Tensor) -> bool:
    """Trained fp32 masters, not bf16 weights in fp32 clothing: most values are not representable in bf16."""
    nonzero = values[values != 0]
    return int((nonzero != nonzero.bfloat16().float()).sum()) > nonzero.numel() // 2


def assert_fp32_file_reproduces_e(run_dir: Path) -> None:
    _, state = read_model_file(run_dir / "model.pt")
    assert mostly_off_the_bf16_grid(fp32_values(state))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["communication_dtype"] == "fp32"
    reported = summary["final"]["total_error"]
    # The same weights: equal up to the thread count's summation order (bf16 files were off by ~2e-4).
    assert error_from_file(run_dir) == pytest.approx(reported, rel=1e-6, abs=0)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("zero_stage", [0, 1])  # ZeRO-0: DeepSpeed's DDP-bf16 optimizer; 1 (and 2): ZeRO's
def test_imp_in_bf16_ships_fp32_masters_with_exact_sparsities(tmp_path: Path, zero_stage: int) -> None:
    run = tmp_path / "run"
    run_distst("imp", str(write_job(tmp_path / "job.yaml")), *tiny_overrides(run), "prune.method=imp",
               "prune.rounds=2", "prune.rewind_step=1", f"deepspeed.zero_stage={zero_stage}", *BF16, timeout=patience(600))
    rewind = torch.load(run / "level_0" / "rewind.pt", weights_only=True)
    assert mostly_off_the_bf16_grid(fp32_values(rewind))
    for level in (0, 1, 2):
        level_dir = run / f"level_{level}"
        assert_fp32_file_reproduces_e(level_dir)
        masks = torch.load(level_dir / "mask.pt", weights_only=True)
        total = sum(m.numel() for m in masks.values())
        assert sum(int(m.sum()) for m in masks.values()) == remaining_target(total, 0.2, level)
        _, state = read_model_file(level_dir / "model.pt")
        assert all(int(torch.count_nonzero(state[f"{name}.weight"][~mask])) == 0 for name, mask in masks.items())


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("method", ["l2", "iccp", "cpst"])
def test_channel_methods_in_bf16(tmp_path: Path, method: str) -> None:
    run = tmp_path / "run"
    settings = {"l2": ["prune.iterations=1"], "iccp": ["prune.ratios=[0.5]", "prune.sides=[encoder]"], "cpst": []}
    run_distst("prune", str(write_job(tmp_path / "job.yaml")), *tiny_overrides(run, train__steps=3),
               f"prune.method={method}", "prune.finetune_steps=1", "deepspeed.zero_stage=1", *settings[method], *BF16,
               timeout=patience(600))
    summary = json.loads((run / "summary.json").read_text())
    trained = [run / f"{s['index']:02d}_{s['stage']}" for s in summary["stages"] if s["kind"] == "train"]
    for stage_dir in trained:
        assert mostly_off_the_bf16_grid(fp32_values(read_model_file(stage_dir / "model.pt")[1])), stage_dir.name
    assert_fp32_file_reproduces_e(trained[0])  # the dense stage (later ones fold or slim before saving)
    assert_fp32_file_reproduces_e(trained[-1])  # the last fine-tuning: a slimmed plan from model.init_from
    if method == "iccp":  # ranked, saved and folded from the fp32 masters, not their bf16 rounding
        saved = torch.load(trained[1] / "scales.pt", weights_only=True)
        scales = fp32_values(saved)
        assert scales.unique().numel() > scales.numel() // 2 and mostly_off_the_bf16_grid(scales)
        # The file holds the convs with those scales folded in (not the optimizer's unfolded copies).
        reported = json.loads((trained[1] / "summary.json").read_text())["final"]["total_error"]
        assert error_from_file(trained[1]) == pytest.approx(reported, rel=1e-5)
    if method == "cpst":  # the channel and xor losses were trained (and logged) in the sparsify stage
        rows = [json.loads(line) for line in (trained[1] / "metrics.jsonl").read_text().splitlines()]
        assert any("cpst_channel" in row and "cpst_xor" in row for row in rows)
    assert (run / "slim" / "model.pt").is_file()


@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_masters_start_from_the_exact_fp32_weights(tmp_path: Path, zero_stage: int) -> None:
    """DeepSpeed builds its fp32 masters from the bf16-cast module; distst writes the exact fp32 weights back,
    so a level starts from its rewind point itself (and a frozen weight keeps its fp32 value for evaluation)."""
    from helpers import tiny_config

    from distst.masters import fp32_master
    from distst.train.engine import initialize, setup_distributed

    cfg = tiny_config(tmp_path, deepspeed__precision="bf16", deepspeed__zero_stage=zero_stage)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    model[1].weight.requires_grad_(False)
    exact = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    initialize(cfg, model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
               setup_distributed().device)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert mostly_off_the_bf16_grid(torch.cat([v.flatten() for v in exact.values()]))
    assert all(torch.equal(fp32_master(p), exact[name]) for name, p in model.named_parameters())


def test_zero0_and_zero1_take_the_same_bf16_steps(tmp_path: Path) -> None:
    """ZeRO-0 in bf16 goes through DeepSpeed's DDP-bf16 optimizer, whose warm-up step at construction left Adam's
    step count one ahead (E 1.4e-3 apart after one step): with it undone both configurations agree bitwise."""
    from helpers import tiny_config

    from distst.masters import fp32_master
    from distst.train.engine import initialize, setup_distributed

    def masters_after_steps(zero_stage: int) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        cfg = tiny_config(tmp_path, deepspeed__precision="bf16", deepspeed__zero_stage=zero_stage)
        engine = initialize(cfg, model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
                            setup_distributed().device)
        data = torch.randn(3, 16, 4)
        for batch in data:
            engine.backward(engine(batch.bfloat16()).float().square().mean())
            engine.step()
        return [fp32_master(p) for p in model.parameters()]

    zero0, zero1 = masters_after_steps(0), masters_after_steps(1)
    assert all(torch.equal(a, b) for a, b in zip(zero0, zero1, strict=True))


def test_cpst_losses_have_gradients_on_bf16_features() -> None:
    """In bf16, n / (n + 1e-5) rounds to 1 and the gradient vanished (0 of 4096 entries non-zero)."""
    torch.manual_seed(0)
    features = (torch.rand(2, 64, 8, 8) * 4 + 1).bfloat16().requires_grad_()
    activity = channel_activity(features)
    assert activity.dtype == torch.float32
    (channel_loss(activity) * 1e4 + xor_loss(activity) * 500).backward()
    assert int(torch.count_nonzero(features.grad)) == features.numel()
    # The closed form of d(channel)/dF at one entry: 1e4 / (B C) * eps / (n + eps)^2 * F / n.
    f = features.detach().float()
    n = f[0, 0].norm()
    expected = 1e4 / (2 * 64) * 1e-5 / (n + 1e-5) ** 2 * f[0, 0, 0, 0] / n
    channel_only = features.detach().clone().requires_grad_()
    (channel_loss(channel_activity(channel_only)) * 1e4).backward()
    assert float(channel_only.grad[0, 0, 0, 0]) == pytest.approx(float(expected), rel=1e-2)


@pytest.mark.slow
@pytest.mark.distributed
def test_qat_in_bf16_ends_on_the_int8_grid(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_distst("train", str(write_job(tmp_path / "job.yaml")), *tiny_overrides(run), "prune.method=qat",
               "deepspeed.zero_stage=1", *BF16, timeout=patience(600))
    _, state = read_model_file(run / "model.pt")
    convs = [v for k, v in state.items() if k.endswith(".weight") and v.dim() == 4]
    assert convs and all(v.dtype == torch.float32 and on_int8_grid(v) for v in convs)


@pytest.mark.slow
@pytest.mark.distributed
def test_gan_imp_in_bf16(tmp_path: Path) -> None:
    run = tmp_path / "run"
    gan = ["model.name=cyclegan", "model.width=0.0625", "model.blocks=1", "model.pool_size=2",
           "model.feature_extractor=random_conv", "model.fid_images=4", "prune.method=imp", "prune.rounds=1"]
    run_distst("imp", str(write_job(tmp_path / "job.yaml", model="cyclegan")),
               *tiny_overrides(run, train__steps=2, train__lr=2e-4), *gan, "deepspeed.zero_stage=1", *BF16,
               timeout=patience(600))
    masks = torch.load(run / "level_1" / "mask.pt", weights_only=True)
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == remaining_target(total, 0.2, 1)
    _, state = read_model_file(run / "level_1" / "model.pt")
    assert mostly_off_the_bf16_grid(fp32_values(state))
    assert all(int(torch.count_nonzero(state[f"{name}.weight"][~mask])) == 0 for name, mask in masks.items())
    assert json.loads((run / "level_1" / "summary.json").read_text())["precision"] == "bf16"


@pytest.mark.slow
@pytest.mark.distributed
def test_bf16_stop_and_resume_is_bitwise_in_module_and_masters(tmp_path: Path) -> None:
    """A masked ZeRO-1 bf16 run stopped after step 2 and resumed ends with the same bf16 weights, fp32 masters
    and losses as one that ran straight through."""
    from distst.train.engine import free_port

    def launch(out: Path, reports: Path, *extra: str) -> list[dict]:
        reports.mkdir(exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               f"--master_port={free_port()}", str(REPO / "tests" / "workers" / "train_worker.py"),
                               str(out), str(reports), "mask_rate=0.5", "model.encoder=trainable", "prune.method=imp",
                               "train.steps=4", "train.deterministic=true", "deepspeed.zero_stage=1",
                               "deepspeed.precision=bf16", *extra],
                              cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=patience(300))
        assert proc.returncode == 0, proc.stderr[-4000:]
        return [json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1)]

    straight = launch(tmp_path / "straight", tmp_path / "r_straight")
    first = launch(tmp_path / "resumed", tmp_path / "r_first", "stop_after=2")
    assert [r["stopped"] for r in first] == [True, True] and first[0]["steps"] == 2
    resumed = launch(tmp_path / "resumed", tmp_path / "r_resumed")
    for rank in (0, 1):
        assert resumed[rank]["digest"] == straight[rank]["digest"]
        assert first[rank]["losses"] + resumed[rank]["losses"] == straight[rank]["losses"]
        assert resumed[rank]["masked_nonzero"] == 0 and resumed[rank]["masked_optimizer_nonzero"] == 0
