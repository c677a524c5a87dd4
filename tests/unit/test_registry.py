"""One record per model and per method, written by the decorators where each is defined, and the one
constructor (``distst.models.create``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import torch
from helpers import REPO
from toy_models import ToyMix, same_weights

from distst import registry
from distst.config import MethodSection, model_section
from distst.models import WeightsError, create, model_class
from distst.models.io import load_model, save_model


def test_builtin_records_say_what_runs_each_method_and_what_it_can_do() -> None:
    record = registry.method_record
    assert record("none").command == "train" and record("none").factory(None) is None  # plain training
    qat = record("qat")
    assert (qat.command, qat.needs_full_parameters, qat.trains_encoder, qat.decides_by_verdict) == ("train", True,
                                                                                                     True, False)
    imp = record("imp")
    assert (imp.command, imp.factory, imp.needs_full_parameters, imp.decides_by_verdict) == ("imp", None, True, True)
    assert {"cpst", "iccp", "l2"} <= set(registry.methods_run_by("prune")) and "imp" in registry.methods_run_by("imp")
    gan, adain = registry.model_record("cyclegan"), registry.model_record("adain")
    assert gan.verdict_metric == "fid" and gan.decides_by_set_metric and gan.inputs == "content"
    assert gan.weight_keys == ("inception_weights", "generator_weights", "generator_ab_weights", "generator_ba_weights")
    assert not adain.decides_by_set_metric and adain.weight_keys == ("vgg_weights", "decoder_weights",
                                                                     "transform_weights")
    # The class attributes generic code reads are the record's.
    assert model_class("cyclegan").verdict_metric == "fid" and model_class("cyclegan").set_metric_names == gan.set_metrics
    assert gan.section.model_class is gan.model_class and model_class("toy_mix") is ToyMix


def test_a_method_has_exactly_one_way_to_run() -> None:
    with pytest.raises(ValueError, match="needs a factory"):
        registry.method()  # run by distst train, but nothing to build
    with pytest.raises(ValueError, match="needs a factory"):
        registry.method(command="imp", factory=lambda cfg: None)
    with pytest.raises(ValueError, match="command 'slim': one of train, imp, prune"):
        registry.method(command="slim")


def test_a_name_is_registered_once() -> None:
    class Impostor(MethodSection):
        method: Literal["imp"] = "imp"

    with pytest.raises(ValueError, match="method 'imp' is registered already"):
        registry.method(command="imp")(Impostor)
    assert registry.method_record("imp").section.__name__ == "ImpSection"
    with pytest.raises(ValueError, match="unknown model 'nope'; registered: (.*, )?adain, "):
        registry.model_record("nope")


def test_create_builds_fresh_or_from_a_state_and_load_model_reads_through_it(tmp_path: Path) -> None:
    section = model_section(name="adain", width=0.125)
    fresh = create(section)
    assert not any(p.requires_grad for p in fresh.encoder.parameters())  # not trainable: the reference set-up
    again = create(section, weights=fresh.state_dict())
    loaded, _ = load_model(save_model(fresh, tmp_path / "m.pt"))
    assert same_weights(again.state_dict(), fresh.state_dict()) and same_weights(loaded.state_dict(),
                                                                                  fresh.state_dict())
    with pytest.raises(WeightsError, match="other.pt does not fit AdaIN"):
        create(model_section(name="adain", width=0.25), weights=fresh.state_dict(), source="other.pt")
    torch.manual_seed(0)
    a = create(section, weights=False)
    torch.manual_seed(0)
    assert same_weights(a.state_dict(), create(section).state_dict())  # no weight files named: the same draws


def test_model_files_leave_out_the_weight_keys_of_the_models_record(tmp_path: Path) -> None:
    gan = create(model_section(name="cyclegan", width=0.125, blocks=1, inception_weights="/nowhere/inception.pth"))
    blob = torch.load(save_model(gan, tmp_path / "gan.pt"), weights_only=True)
    assert "inception_weights" not in blob["model"] and blob["model"]["name"] == "cyclegan"


# Generic code asks a record for a capability; it never tests a model's or a method's name.
GENERIC = ("distst/config.py", "distst/preflight.py", "distst/train/loop.py", "distst/commands/train.py",
           "distst/bench/train.py", "distst/models/__init__.py", "distst/models/base.py", "distst/models/io.py",
           "distst/export/onnx_export.py", "distst/cli.py")


def test_generic_code_does_not_name_models_or_methods() -> None:
    names = [name for name in (*registry.MODELS, *registry.METHODS) if name != "none"]
    for path in GENERIC:
        source = (REPO / path).read_text()
        named = [name for name in names if f'"{name}"' in source or f"'{name}'" in source]
        assert not named, f"{path} names {named}"
