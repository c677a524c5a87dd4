"""The contracts the next methods and models plug into, each with a small real user:
channel plans, the method hooks (model changes before DeepSpeed, feature losses, gradient edits, end hook,
method metrics), a two-optimizer model, open config sections, and a trainer that runs in any thread."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers import REPO, SLIM_ADAIN, patience, run_distst, subprocess_env, tiny_config
from toy_models import ChannelGate, ToyGAN, same_weights

from distst.config import ConfigError, build_config, model_section, with_overrides
from distst.models import PlanError, build
from distst.models.complexity import macs
from distst.models.io import load_model, save_model
from distst.prune.masks import MaskedTraining, full_masks, prune_magnitude
from distst.stop import StopRequest
from distst.track import read_metrics
from distst.train import GradientAccess, Method, StepInputs, TrainContext, train

# --- channel plans ----------------------------------------------------------------------------

def test_default_plan_is_the_reference_times_width() -> None:
    model = build(model_section(name="adain", width=0.25))
    assert model.plan["encoder"]["conv1_1"] == 16 and model.plan["encoder"]["conv4_1"] == 128
    assert model.plan["decoder"] == {"conv3_4": 64, "conv3_3": 64, "conv3_2": 64, "conv3_1": 64,
                                     "conv2_2": 32, "conv2_1": 32, "conv1_2": 16, "conv1_1": 16}


@pytest.mark.parametrize("name", ["adain", "sanet"])
def test_a_partial_plan_sets_exactly_those_widths(name: str) -> None:
    plan = {"encoder": {"conv2_1": 9}, "decoder": {"conv2_1": 7}}
    if name == "sanet":
        plan["transform"] = {"sanet4_1.key": 6, "sanet5_1.value": 5}
    model = build(model_section(name=name, width=0.125, plan=plan))
    enc, dec = model.encoder.conv_layers(), model.decoder.conv_layers()
    assert enc["conv2_1"].out_channels == 9 and enc["conv2_2"].in_channels == 9
    assert dec["conv2_1"].out_channels == 7 and dec["conv1_2"].in_channels == 7
    assert dec["rgb"].out_channels == 3
    if name == "sanet":
        assert model.transform.sanet4_1.f.out_channels == 6 and model.transform.sanet5_1.h.out_channels == 5
        assert model.transform.sanet5_1.out_conv.in_channels == 5
    size = 32
    out = model.eval()(torch.rand(1, 3, size, size), torch.rand(1, 3, size, size))
    assert out.shape == (1, 3, size, size)


@pytest.mark.parametrize(("name", "plan", "message"), [
    ("adain", {"decoder": {"conv1_1": 0}}, r"model.plan.decoder.conv1_1=0: a layer needs at least one channel"),
    ("adain", {"encoder": {"conv5_1": 8}}, r"model.plan.encoder.conv5_1: adain has no resizable layer.*valid: conv1_1"),
    ("adain", {"head": {"x": 1}}, r"model.plan.head: adain has no resizable group 'head'; its groups: encoder, decoder"),
    ("sanet", {"encoder": {"conv5_1": 8}}, r"model.plan.encoder.conv5_1=8 must equal encoder.conv4_1=64: SANet adds"),
])
def test_invalid_plans_are_refused_naming_the_layer(name: str, plan: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({"model": {"name": name, "width": 0.125, "plan": plan}})
    with pytest.raises(PlanError, match=message):
        build(model_section(name=name, width=0.125).model_copy(update={"plan": plan}))


def test_slim_model_file_round_trips_and_counts_fewer_macs(tmp_path: Path) -> None:
    slim = build(model_section(name="adain", width=0.125, plan=SLIM_ADAIN)).eval()
    save_model(slim, tmp_path / "slim.pt")
    loaded, section = load_model(tmp_path / "slim.pt")
    assert loaded.plan == slim.plan and section.plan == slim.plan
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(slim(x, x), loaded.eval()(x, x))
    dense = build(model_section(name="adain", width=0.125))
    assert macs(loaded, 64)["total"] < macs(dense, 64)["total"]


def test_format_1_model_files_still_load(tmp_path: Path) -> None:
    model = build(model_section(name="adain", width=0.125))
    torch.save({"format": "distst-model/1", "model": {"name": "adain", "width": 0.125, "encoder": "frozen"},
                "state_dict": model.state_dict()}, tmp_path / "old.pt")
    loaded, _ = load_model(tmp_path / "old.pt")
    assert same_weights(loaded.state_dict(), model.state_dict())


@pytest.mark.slow
def test_slim_model_trains_further_and_stylizes_from_the_cli(tmp_path: Path) -> None:
    slim = build(model_section(name="adain", width=0.125, plan=SLIM_ADAIN))
    save_model(slim, tmp_path / "slim.pt")
    cfg = tiny_config(tmp_path / "run", model__init_from=str(tmp_path / "slim.pt"), train__steps=2)
    train(cfg, tmp_path / "run")
    trained, section = load_model(tmp_path / "run")
    assert trained.plan == slim.plan
    import yaml

    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["plan"]
    assert recorded == {"encoder": SLIM_ADAIN["encoder"], "decoder": SLIM_ADAIN["decoder"]}  # what differs
    image = tmp_path / "content.png"
    from distst.images import save_image

    save_image(torch.rand(3, 40, 40), image)
    run_distst("stylize", "--checkpoint", str(tmp_path / "run"), "--content", str(image), "--style", str(image),
               "--content-size", "32", "--style-size", "32", "--out", str(tmp_path / "out.png"))
    assert (tmp_path / "out.png").is_file()
    shown = run_distst("models", "--json", "--checkpoint", str(tmp_path / "run" / "model.pt"))
    row = json.loads(shown.stdout)[0]
    assert row["plan"]["encoder"]["conv4_1"] == 40 and row["params"]["total"] == sum(
        p.numel() for p in trained.parameters())


# --- method hooks -----------------------------------------------------------------------------

def test_l1_on_a_gate_added_before_deepspeed_drives_it_down_and_folds(tmp_path: Path) -> None:
    gates = {}
    for lam in (0.0, 1.0):
        method = ChannelGate(lam)
        out = tmp_path / f"lam{lam}"
        train(tiny_config(out, train__steps=4, train__eval_every=4), out, method)
        gates[lam] = method.final_gate
        rows = [r for r in read_metrics(out / "metrics.jsonl") if "gate_mean" in r]
        assert rows and rows[-1]["gate_mean"] == pytest.approx(float(method.final_gate.mean()))
        model, _ = load_model(out)  # folded: the reference layout loads strictly, no gate key
        assert "decoder.1.gate" not in model.state_dict()
    lr, steps = 1e-3, 4
    # Adam moves each gate by about lr per step against the sign of its gradient, which L1 dominates.
    assert torch.all(gates[1.0] < 1.0 - 0.5 * lr * steps)
    assert gates[1.0].mean() < gates[0.0].mean() - 0.5 * lr * steps


@pytest.mark.slow
def test_a_methods_parameters_are_checkpointed_and_resumed_bitwise(tmp_path: Path) -> None:
    settings = {"train__deterministic": "true", "train__checkpoint_every": 2}
    straight, resumed = ChannelGate(1.0), ChannelGate(1.0)
    train(tiny_config(tmp_path / "a", train__steps=4, **settings), tmp_path / "a", straight)
    train(tiny_config(tmp_path / "b", train__steps=2, **settings), tmp_path / "b", ChannelGate(1.0))
    train(tiny_config(tmp_path / "b", train__steps=4, **settings), tmp_path / "b", resumed)
    assert torch.equal(straight.final_gate, resumed.final_gate)


class FeatureProbe(Method):
    def __init__(self) -> None:
        self.seen: list[dict[str, list[torch.Tensor]]] = []

    def feature_requests(self) -> set[str]:
        return {"content/relu4_1", "style/relu1_1", "transform", "output", "module:decoder.1"}

    def extra_losses(self, ctx: TrainContext, inputs: StepInputs) -> dict[str, torch.Tensor]:
        self.seen.append({k: [t.detach().clone() for t in v] for k, v in inputs.features.items()})
        self.batch_shape = inputs.batch[0].shape
        # A feature loss that really back-propagates: the features are the forward pass's own tensors.
        out = inputs.features["output"][0]
        assert out.requires_grad
        return {"feature_l1": 1e-6 * out.abs().mean()}


def test_extra_losses_see_the_batch_and_this_forwards_features_without_a_second_pass(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", train__steps=1, train__eval_every=1)
    calls = {"n": 0}

    class CountEncoderCalls(Method):
        def prepare_model(self, model, cfg) -> None:  # noqa: ANN001
            model.encoder.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))

    class Probe(FeatureProbe):
        def extra_losses(self, ctx: TrainContext, inputs: StepInputs) -> dict[str, torch.Tensor]:
            self.encoder_calls = calls["n"]  # by the time the features reach the method
            return super().extra_losses(ctx, inputs)

    probe = Probe()
    from distst.train import MethodList

    train(cfg, tmp_path / "run", MethodList([CountEncoderCalls(), probe]))
    assert len(probe.seen) == 1
    features = probe.seen[0]
    width = cfg.model.width
    assert features["content/relu4_1"][0].shape == (2, int(512 * width), 4, 4)
    assert features["style/relu1_1"][0].shape == (2, int(64 * width), 32, 32)
    assert features["output"][0].shape == probe.batch_shape == (2, 3, 32, 32)
    assert len(features["module:decoder.1"]) == 1
    assert probe.encoder_calls == 2  # content and style of the one training forward: no second pass


class FreezeFilters(Method):
    """Zeroes the gradients of the first half of one conv's filters through DeepSpeed's full-gradient API."""

    def __init__(self, layer: str = "decoder.1") -> None:
        self.layer = layer
        self.calls: list[str] = []

    def edit_gradients(self, ctx: TrainContext, stage: str, grads: GradientAccess) -> None:
        self.calls.append(stage)
        weight = dict(ctx.model.named_modules())[self.layer].weight
        grad = grads.get(weight)
        assert grad is not None
        frozen = grad.clone()
        frozen[: weight.shape[0] // 2] = 0
        grads.set(weight, frozen)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("zero_stage", [0, 2])
def test_gradient_edits_freeze_weights_under_zero_with_two_gloo_ranks(tmp_path: Path, zero_stage: int) -> None:
    from distst.train.engine import free_port

    out, report = tmp_path / "run", tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
         str(REPO / "tests" / "workers" / "freeze_worker.py"), str(out), str(report), f"deepspeed.zero_stage={zero_stage}"],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=patience(300))
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(report.read_text())
    assert result["edits"] == 3  # one per optimizer step
    assert result["frozen_changed"] == 0, "a gradient edit did not hold"
    assert result["free_changed"] > 0, "nothing trained"


# --- a model with two optimizers ----------------------------------------------------------------

class StageLog(Method):
    def __init__(self) -> None:
        self.order: list[str] = []

    def edit_gradients(self, ctx: TrainContext, stage: str, grads: GradientAccess) -> None:
        self.order.append(stage)


def toy_config(out: Path, **extra: object):  # noqa: ANN201
    return tiny_config(out, model__name="toy_gan", **extra)


def test_two_optimizers_step_in_the_declared_order_and_train_their_own_groups(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path / "run", train__steps=3)
    torch.manual_seed(cfg.train.seed)  # the trainer's own initial weights
    before = build(cfg.model).state_dict()
    log = StageLog()
    result = train(cfg, tmp_path / "run", log)
    assert log.order == ["generator", "discriminator"] * 3
    after, _ = load_model(tmp_path / "run")
    assert {k: v.shape for k, v in after.state_dict().items()} == {k: v.shape for k, v in before.items()}
    changed = {k for k, v in after.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("generator.") for k in changed) and any(k.startswith("discriminator.") for k in changed)
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "generator/loss" in r]
    assert rows and {"generator/adversarial", "discriminator/d_fake"} <= set(rows[0])
    assert set(result.summary["params"]) == {"generator", "discriminator", "total"}
    assert {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()} and all(
        {d.name for d in ckpt.iterdir() if d.is_dir()} == {"generator", "discriminator"}
        for ckpt in (tmp_path / "run" / "checkpoints").iterdir())


@pytest.mark.slow
def test_two_optimizer_model_resumes_bitwise_and_prunes_its_discriminator(tmp_path: Path) -> None:
    settings = {"train__deterministic": "true", "train__checkpoint_every": 2}
    model = build(toy_config(tmp_path / "a", **settings).model)
    masks = prune_magnitude(model, full_masks(model, ["discriminator"]), 0.5, 1, layerwise=False)
    train(toy_config(tmp_path / "a", train__steps=4, **settings), tmp_path / "a", MaskedTraining(masks))
    train(toy_config(tmp_path / "b", train__steps=2, **settings), tmp_path / "b", MaskedTraining(masks))
    train(toy_config(tmp_path / "b", train__steps=4, **settings), tmp_path / "b", MaskedTraining(masks))
    a, b = load_model(tmp_path / "a")[0], load_model(tmp_path / "b")[0]
    assert same_weights(a.state_dict(), b.state_dict())
    for name, mask in masks.items():
        weight = dict(a.named_modules())[name].weight
        assert torch.count_nonzero(weight[~mask]) == 0 and torch.count_nonzero(weight[mask]) > 0


# --- open config ----------------------------------------------------------------------------------

def test_each_method_validates_its_own_section() -> None:
    assert build_config({}, ["prune.method=imp", "prune.rate=0.3"]).prune.rate == 0.3
    with pytest.raises(ConfigError, match=r"prune.rate: unknown key; valid keys in prune \(prune.method=none\): method"):
        build_config({}, ["prune.rate=0.3"])
    with pytest.raises(ConfigError, match=r"prune.lam: unknown key.*\(prune.method=imp\)"):
        build_config({}, ["prune.method=imp", "prune.lam=1e-4"])
    cfg = build_config({}, ["prune.method=gate_l1", "prune.lam=1e-4"])  # a section registered by a test
    assert cfg.prune.lam == 1e-4
    with pytest.raises(ConfigError, match=r"prune.lamb: unknown key \(did you mean 'prune.lam'\?\)"):
        build_config({}, ["prune.method=gate_l1", "prune.lamb=1"])
    with pytest.raises(ConfigError, match=r"prune.method: unknown method 'slimm'.*registered: .*gate_l1, .*imp, .*none"):
        build_config({}, ["prune.method=slimm"])


def test_model_defaults_and_groups_come_from_the_registry() -> None:
    gan = build_config({}, ["model.name=toy_gan", "prune.method=imp"])
    assert gan.prune.scope == ["generator"] and gan.model.l1_weight == 10.0
    with pytest.raises(ConfigError, match=r"prune.scope: toy_gan has no group\(s\) 'encoder'; its groups: generator, "
                                          r"discriminator"):
        build_config({}, ["model.name=toy_gan", "prune.method=imp", "prune.scope=[encoder]"])
    imp = build_config({}, ["prune.method=imp"])
    assert imp.model.encoder == "trainable" and imp.prune.scope == ["encoder", "transform", "decoder"]
    assert with_overrides(imp, {"prune.method": "none"}).model.encoder == "frozen"  # auto is re-resolved
    assert with_overrides(build_config({}), {"prune.method": "imp"}).model.encoder == "trainable"
    src = (REPO / "distst" / "config.py").read_text()
    assert not any(word in src for word in ("adain", "sanet", "'imp'", '"imp"', "style_weight"))


# --- a trainer callable from any thread --------------------------------------------------------------

def test_train_runs_in_a_thread_and_stops_on_request_from_another(tmp_path: Path) -> None:
    settings = {"train__deterministic": "true", "train__checkpoint_every": 100}
    reference = tmp_path / "reference"
    worker = threading.Thread(target=train, args=(tiny_config(reference, train__steps=5, **settings), reference))
    worker.start()
    worker.join(timeout=patience(300))
    assert not worker.is_alive() and (reference / "model.pt").is_file()

    request, reached, go = StopRequest(), threading.Event(), threading.Event()

    class PauseAtStep2(Method):
        # Inside step 2 (one step finished): the loop reads stop requests once per step, at the step's end.
        def extra_losses(self, ctx: TrainContext, inputs: StepInputs) -> dict:
            if ctx.step == 1:
                reached.set()
                go.wait(timeout=patience(60))
            return {}

    results = []
    out = tmp_path / "stopped"
    cfg = tiny_config(out, train__steps=5, **settings)
    worker = threading.Thread(target=lambda: results.append(train(cfg, out, PauseAtStep2(), stop=request)))
    worker.start()
    assert reached.wait(timeout=patience(300))
    request.set("test")  # from this (another) thread
    go.set()
    worker.join(timeout=patience(300))
    assert results[0].stopped and results[0].steps == 2 and not (out / "model.pt").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]
    assert not request.is_set()  # acted on

    resumed = train(cfg, out, stop=request)
    assert not resumed.stopped and resumed.steps == 5
    a = torch.load(reference / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert same_weights(a, b)


def test_toy_gan_is_a_real_registered_model() -> None:
    assert isinstance(build(model_section(name="toy_gan")), ToyGAN)
