"""Quantisation-aware fine-tuning: fake-quant closed forms, the registered section and factory, and a run
from a slimmed model file that is stopped, resumed bitwise, and ends in a plain model file on the int8 grid."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import SLIM_ADAIN, StopAt, on_int8_grid, tiny_config
from toy_models import same_weights

from distst.config import ConfigError, build_config, model_section
from distst.models import create
from distst.models.io import load_model, save_model
from distst.preflight import problems
from distst.quant import QatSection, QuantAwareTraining
from distst.quant.fake import ActivationObserver, FakeQuantWeight
from distst.registry import method_record
from distst.stop import StopRequest
from distst.train import MethodList, train


def test_fake_quant_weight_is_per_channel_symmetric_int8_with_a_straight_through_gradient() -> None:
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    quantised = FakeQuantWeight()(weight)
    assert on_int8_grid(quantised.detach())
    scale = weight.detach().flatten(1).abs().amax(dim=1) / 127
    assert float((quantised - weight).detach().abs().flatten(1).amax(dim=1).div(scale).max()) <= 0.5 + 1e-4  # rounding
    quantised.sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight))


def test_activation_observer_tracks_an_ema_of_min_and_max_and_freezes_in_eval() -> None:
    observer = ActivationObserver(momentum=0.25)
    first, second = torch.tensor([-1.0, 3.0]), torch.tensor([0.0, 7.0])
    observer(first)
    observer(second)
    assert float(observer.low) == pytest.approx(-1.0 + 0.25 * (0.0 - -1.0))
    assert float(observer.high) == pytest.approx(3.0 + 0.25 * (7.0 - 3.0))
    observer.eval()
    out = observer(torch.tensor([100.0, -0.3]))
    assert int(observer.seen) == 2  # not updated in eval mode
    scale = (observer.high - observer.low) / 255
    assert float(out[0]) == pytest.approx(float(observer.high), abs=float(scale))  # clipped to the range


def test_qat_is_a_registered_method_that_trains_the_whole_network() -> None:
    cfg = build_config({}, ["prune.method=qat", "prune.observer_momentum=0.1"])
    assert isinstance(cfg.prune, QatSection) and cfg.prune.scope == ["encoder", "transform", "decoder"]
    assert cfg.model.encoder == "trainable"
    assert isinstance(method_record("qat").factory(cfg), QuantAwareTraining)
    with pytest.raises(ConfigError, match="prune.scope"):
        build_config({}, ["prune.method=qat", "prune.scope=[generator]"])


def test_qat_from_a_slimmed_model_resumes_bitwise_after_a_stop_and_saves_plain_int8_weights(tmp_path: Path) -> None:
    slim = create(model_section(name="adain", width=0.125, plan=SLIM_ADAIN))
    save_model(slim, tmp_path / "slim.pt")
    settings = {"prune__method": "qat", "model__init_from": str(tmp_path / "slim.pt"), "train__steps": 4,
                "train__deterministic": "true", "train__checkpoint_every": 100, "train__eval_every": 4}

    def run(out: Path, stop_at: int | None, request: StopRequest) -> tuple[QuantAwareTraining, object]:
        cfg = tiny_config(out, **settings)
        qat = QuantAwareTraining(cfg.prune)
        return qat, train(cfg, out, MethodList([qat, StopAt(stop_at, request)]), stop=request)

    run(tmp_path / "straight", None, StopRequest())
    request = StopRequest()
    _, stopped = run(tmp_path / "resumed", 2, request)
    assert stopped.stopped and stopped.steps == 2
    saved = torch.load(tmp_path / "resumed" / "checkpoints" / "step_00000002" / "state.pt", weights_only=True)
    # The QAT method's state, checkpointed with the step (whatever key MethodList files it under).
    observers = next(state["observers"] for state in saved["method"].values() if "observers" in state)
    assert observers and all(int(o["seen"]) > 0 and float(o["high"]) > float(o["low"]) for o in observers.values())
    resumed, result = run(tmp_path / "resumed", None, request)
    assert not result.stopped and result.steps == 4
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)["state_dict"]
    assert same_weights(a, b)
    assert not any("parametrizations" in key or "observer" in key for key in a)  # the reference layout
    model, _ = load_model(tmp_path / "resumed")
    assert model.plan == slim.plan  # the slimmed plan carried through
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(on_int8_grid(conv.weight.detach()) for conv in convs)


def test_observers_follow_the_model_into_eval_mode_and_rest_during_evaluation() -> None:
    """An observer is no submodule (it stays out of state dicts), yet ``model.eval()`` must stop it: evaluation
    never moves the ranges (it did, and issued two all-reduces per conv per forward)."""
    from distst.data import eval_pairs
    from distst.evaluate import evaluate

    cfg = tiny_config(Path("unused"), prune__method="qat")
    model = create(cfg.model)
    qat = QuantAwareTraining(cfg.prune)
    qat.prepare_model(model, cfg)
    content, style = eval_pairs(cfg.data)
    model.train()
    model(content, style)
    before = {name: o.state() for name, o in qat.observers().items()}
    assert before and all(int(s["seen"]) >= 1 for s in before.values())  # the encoder runs twice in AdaIN
    evaluate(model, model.loss_network(), content, style)
    assert all(not o.training for o in qat.observers().values())  # set by the evaluation's model.eval()
    after = {name: o.state() for name, o in qat.observers().items()}
    assert all(torch.equal(after[n][k], before[n][k]) for n in before for k in before[n])
    model.train()
    model(content, style)
    assert all(o.training and int(o.seen) == 2 * int(before[n]["seen"]) for n, o in qat.observers().items())


def test_qat_on_cyclegan_asks_for_no_inception_weights(tmp_path: Path) -> None:
    """QAT trains the whole network but is judged by its own run, never by FID: no Inception file, no FID set."""
    cfg = build_config({}, ["model.name=cyclegan", "prune.method=qat"])  # no model.inception_weights: accepted
    assert cfg.model.held_out_images(cfg) == ("", 0)
    assert not [p for p in problems(cfg, tmp_path / "run") if "inception" in p or "fid_images" in p]
    with pytest.raises(ConfigError, match="model.inception_weights: prune.method=imp on cyclegan decides by FID"):
        build_config({}, ["model.name=cyclegan", "prune.method=imp"])  # a lottery decides by FID: it needs them
