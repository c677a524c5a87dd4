"""CycleGAN: the reference layouts and parameter counts, the channel plan, the two-stage training through the one
trainer (declared order, no gradient leak into the discriminators), the schedule, the image pool, and a stop and
resume that is bitwise equal (generators, discriminators, both optimizers, pools)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, StopAt, patience, subprocess_env, tiny_config
from torch import nn
from toy_models import same_weights

from distst.config import ConfigError, TrainConfig, build_config, model_section
from distst.models import build
from distst.models.cyclegan import CycleGAN, ImagePool, PatchDiscriminator, ResnetGenerator
from distst.models.io import load_model, save_model
from distst.stop import StopRequest
from distst.train import GradientAccess, Method, TrainContext, train

# The reference architecture written out (Zhu et al. 2017; ngf = ndf = 64, 9 blocks): (type, in, out, kernel, stride)
REFERENCE_GENERATOR = [
    ("Conv2d", 3, 64, 7, 1), ("Conv2d", 64, 128, 3, 2), ("Conv2d", 128, 256, 3, 2),
    *[("Conv2d", 256, 256, 3, 1)] * 18,
    ("ConvTranspose2d", 256, 128, 3, 2), ("ConvTranspose2d", 128, 64, 3, 2), ("Conv2d", 64, 3, 7, 1),
]
REFERENCE_PATCHGAN = [("Conv2d", 3, 64, 4, 2), ("Conv2d", 64, 128, 4, 2), ("Conv2d", 128, 256, 4, 2),
                      ("Conv2d", 256, 512, 4, 1), ("Conv2d", 512, 1, 4, 1)]
TINY = {"model__name": "cyclegan", "model__width": 0.0625, "model__blocks": 1, "model__pool_size": 3,
        "train__lr": 2e-4}


def layout(module: nn.Module) -> list[tuple[str, int, int, int, int]]:
    return [(type(m).__name__, m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0])
            for m in module.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]


def params(rows: list[tuple[str, int, int, int, int]]) -> int:
    return sum(cin * cout * k * k + cout for _, cin, cout, k, _ in rows)  # every conv has a bias (instance norm)


def test_reference_layouts_and_parameter_counts() -> None:
    plan = CycleGAN.reference_plan()
    generator = ResnetGenerator({k.removeprefix("ab."): v for k, v in plan["generator"].items() if k[:3] == "ab."}, 9)
    discriminator = PatchDiscriminator({k.removeprefix("a."): v for k, v in plan["discriminator"].items()
                                        if k[:2] == "a."})
    assert layout(generator) == REFERENCE_GENERATOR and layout(discriminator) == REFERENCE_PATCHGAN
    assert sum(p.numel() for p in generator.parameters()) == params(REFERENCE_GENERATOR) == 11_378_179  # ~11.4 M
    assert sum(p.numel() for p in discriminator.parameters()) == params(REFERENCE_PATCHGAN) == 2_764_737
    norms = [m for m in generator.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 1 + 2 + 18 + 2 and not any(m.affine or m.track_running_stats for m in norms)
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in generator.modules()) == 2 + 18


def test_macs_of_a_translation_are_the_generators_conv_sum() -> None:
    from distst.models.complexity import macs

    model = build(model_section(name="cyclegan", width=0.125, blocks=2))
    # output side of each conv for a 256 px photo (a transposed conv: its input side), in layer order
    sides = [256, 128, 64, *[64] * 4, 64, 128, 256]
    rows = layout(model.generator["ab"])
    expected = sum(cin * cout * k * k * side * side for (_, cin, cout, k, _), side in zip(rows, sides, strict=True))
    assert macs(model, 256) == {"generator": expected, "discriminator": 0, "total": expected}


def test_width_and_blocks_scale_the_plan_and_sizes_are_kept() -> None:
    model = build(model_section(name="cyclegan", width=0.0625, blocks=2, pool_crop=32))
    assert model.plan["generator"]["ab.down2"] == 16 and model.plan["generator"]["ba.block2"] == 16
    assert "ab.block3" not in model.plan["generator"] and model.plan["discriminator"]["b.conv4"] == 32
    assert set(model.groups()) == {"generator", "discriminator"}
    x = torch.rand(2, 3, 36, 44)
    with torch.no_grad():
        out = model(x)
    assert out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    slim = build(model_section(name="cyclegan", width=0.0625, blocks=2, plan={"generator": {"ab.block1": 5}}))
    assert slim.generator["ab"].blocks[0].body.conv1.out_channels == 5
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.rand(1, 3, 34, 34))
    with pytest.raises(ConfigError, match=r"model.feature_extractor='fid9000': unknown"):
        build_config({}, ["model.name=cyclegan", "model.feature_extractor=fid9000"])


def test_learning_rate_is_constant_then_decays_linearly_to_zero() -> None:
    model = build(model_section(name="cyclegan", width=0.0625, blocks=1, decay_start=0.6))
    stages = model.stages(TrainConfig(steps=10, lr=2e-4))
    assert [(s.name, s.groups, s.lr, s.betas) for s in stages] == [
        ("generator", ("generator",), 2e-4, (0.5, 0.999)), ("discriminator", ("discriminator",), 2e-4, (0.5, 0.999))]
    assert [stages[1].lr_lambda(step) for step in range(11)] == pytest.approx(
        [1, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0])


def test_image_pool_fills_then_swaps_half_the_time() -> None:
    pool = ImagePool(3, 8)
    first = torch.rand(3, 3, 8, 8)
    assert torch.equal(pool.query(first), first) and int(pool.count) == 3 and torch.equal(pool.images, first)
    shown_stored = 0
    for _ in range(40):
        before = pool.images.clone()
        new = torch.rand(1, 3, 8, 8)
        shown = pool.query(new)[0]
        if torch.equal(shown, new[0]):
            assert torch.equal(pool.images, before)  # shown itself, pool unchanged
        else:  # an old image is shown and the new one takes its place
            index = next(i for i in range(3) if torch.equal(before[i], shown))
            assert torch.equal(pool.images[index], new[0])
            shown_stored += 1
    assert 8 <= shown_stored <= 32 and int(pool.count) == 3
    assert torch.equal(ImagePool(0, 8).query(first), first)  # pool_size 0: no history


def test_rank_state_is_the_pools_and_loads_only_its_own_keys() -> None:
    model = build(model_section(name="cyclegan", width=0.0625, blocks=1, pool_size=2, pool_crop=32))
    state = {k: v.clone() for k, v in model.rank_state().items()}
    assert sorted(state) == [f"discriminator.pool_{d}.{b}" for d in "ab" for b in ("count", "images", "rng")]
    model.discriminator.pool_a.query(torch.rand(1, 3, 32, 32))
    model.load_rank_state(state)
    assert int(model.discriminator.pool_a.count) == 0 and not model.discriminator.pool_a.images.any()
    with pytest.raises(ValueError, match="cyclegan: this rank's saved state has"):
        model.load_rank_state({})
    assert build(model_section(name="adain", width=0.125)).rank_state() == {}


def test_model_files_keep_the_pools_and_load_strictly(tmp_path: Path) -> None:
    model = build(model_section(name="cyclegan", width=0.0625, blocks=1, pool_size=2, pool_crop=32))
    model.discriminator.pool_b.query(torch.rand(1, 3, 32, 32))
    save_model(model, tmp_path / "model.pt")
    loaded, section = load_model(tmp_path / "model.pt")
    assert section.pool_crop == 32 and same_weights(loaded.state_dict(), model.state_dict())
    assert int(loaded.discriminator.pool_b.count) == 1


class StageProbe(Method):
    """Records the stage order and whether a discriminator gradient exists when the generator stage steps."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.leaked: list[bool] = []

    def edit_gradients(self, ctx: TrainContext, stage: str, grads: GradientAccess) -> None:
        self.order.append(stage)
        if stage == "generator":
            self.leaked.append(any(p.grad is not None and bool(p.grad.any())
                                   for p in ctx.model.discriminator.parameters()))


def test_two_optimizers_step_in_order_and_the_generator_stage_leaves_the_discriminators_alone(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", **TINY, train__steps=2, train__eval_every=2, train__checkpoint_every=2)
    torch.manual_seed(cfg.train.seed)
    before = build(cfg.model).state_dict()
    probe = StageProbe()
    result = train(cfg, tmp_path / "run", probe)
    assert probe.order == ["generator", "discriminator"] * 2 and probe.leaked == [False, False]
    after = load_model(tmp_path / "run")[0].state_dict()
    for prefix in ("generator.ab.", "generator.ba.", "discriminator.a.", "discriminator.b."):
        assert any(not torch.equal(v, before[k]) for k, v in after.items() if k.startswith(prefix)), prefix
    assert int(after["discriminator.pool_a.count"]) == 3  # 2 images per step, capacity 3
    # The generator photo -> painting on the synthetic clips: its temporal errors beside the cycle errors.
    assert set(result.summary["final"]) == {"photo_cycle_error", "painting_cycle_error", "total_error",
                                            "temporal_error", "temporal_l1", "temporal_output_std"}


def _checkpoint(run: Path, stage: str) -> dict:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    path = run / "checkpoints" / "step_00000004" / stage / "mp_rank_00_model_states.pt"
    with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]):
        return torch.load(path, weights_only=True)


def _flat(tree: object) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for k in sorted(tree, key=str) for t in _flat(tree[k])]
    if isinstance(tree, list | tuple):
        return [t for item in tree for t in _flat(item)]
    return []


def stop_and_resume_two_stages(tmp_path: Path, tiny: dict) -> tuple[dict, dict]:
    """Runs 4 steps straight and 2 + 2 with a stop between; checks both stages' optimizers and
    schedules are equal and returns the two final model state dicts."""
    settings = {**tiny, "train__steps": 4, "train__deterministic": "true", "train__checkpoint_every": 4,
                "train__eval_every": 4}
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(tiny_config(straight, **settings), straight)
    request = StopRequest()
    first = train(tiny_config(stopped, **settings), stopped, StopAt(2, request), stop=request)
    assert first.stopped and first.steps == 2
    train(tiny_config(stopped, **settings), stopped)
    for stage in ("generator", "discriminator"):
        x, y = _checkpoint(straight, stage), _checkpoint(stopped, stage)
        assert x["optimizer"]["state"] and len(_flat(x["optimizer"])) == len(_flat(y["optimizer"]))
        assert all(torch.equal(s, t) for s, t in zip(_flat(x["optimizer"]), _flat(y["optimizer"]), strict=True))
        assert x["lr_scheduler"] == y["lr_scheduler"]
    return load_model(straight)[0].state_dict(), load_model(stopped)[0].state_dict()


@pytest.mark.slow
def test_stop_and_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path: Path) -> None:
    a, b = stop_and_resume_two_stages(tmp_path, TINY)
    assert same_weights(a, b) and int(a["discriminator.pool_b.count"]) == 3
    assert any(not torch.equal(a["discriminator.pool_b.images"][i], a["discriminator.pool_a.images"][i])
               for i in range(3))


@pytest.mark.slow
@pytest.mark.distributed
def test_two_rank_stop_and_resume_is_bitwise_with_every_ranks_own_pools(tmp_path: Path) -> None:
    """DeepSpeed saves rank 0's module only; each rank's pools go with its own checkpoint file and come back."""
    from distst.train.engine import free_port

    settings = {**TINY, "train__steps": 4, "train__deterministic": "true", "train__checkpoint_every": 4,
                "train__eval_every": 4}
    overrides = [f"{k.replace('__', '.')}={v}" for k, v in settings.items()]

    def launch(out: Path, *extra: str) -> list[dict]:
        reports = tmp_path / f"{out.name}_reports_{len(list(tmp_path.glob(f'{out.name}_reports_*')))}"
        reports.mkdir()
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               f"--master_port={free_port()}", str(REPO / "tests" / "workers" / "train_worker.py"),
                               str(out), str(reports), *overrides, *extra],
                              cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=patience(300))
        # the head too: a rank's own error comes before torchrun's report (a rank once aborted at the stop)
        assert proc.returncode == 0, proc.stderr[:3000] + "\n[...]\n" + proc.stderr[-3000:]
        return [json.loads((reports / f"rank{rank}.json").read_text()) for rank in (0, 1)]

    straight = launch(tmp_path / "straight")
    first = launch(tmp_path / "stopped", "stop_after=2")
    resumed = launch(tmp_path / "stopped")
    assert [r["stopped"] for r in first] == [True, True] and [r["steps"] for r in resumed] == [4, 4]
    assert straight[0]["digest"] != straight[1]["digest"]  # the ranks' pools differ (the weights agree)
    for whole, before, after in zip(straight, first, resumed, strict=True):
        assert whole["losses"] == before["losses"] + after["losses"]
        assert whole["digest"] == after["digest"]  # weights, optimizer-updated, and this rank's own pools
