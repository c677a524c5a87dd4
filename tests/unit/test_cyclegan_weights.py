"""Published CycleGAN generator files (the reference's ``latest_net_G.pth`` layout) load strictly into distst's
CycleGAN and translate as the reference network does; files of other architectures are refused in one line
naming the first mismatching key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cyclegan_reference import (
    ReferencePatchGAN,
    ReferenceResnetGenerator,
    ReferenceUnetLike,
    write_generator,
)
from helpers import tiny_config

from distst.config import ConfigError, model_section
from distst.models import CycleGAN, create
from distst.models.cyclegan import CycleGANSection, ResnetGenerator
from distst.weights import WeightsError

NGF, WIDTH = 4, 0.0625  # the reference's ngf 64 at distst's width 1


def tiny(blocks: int = 2, **files: str) -> CycleGAN:
    return create(model_section(name="cyclegan", width=WIDTH, blocks=blocks, **files)).eval()  # type: ignore[return-value]


def test_the_derived_key_layout_is_the_references_at_full_size() -> None:
    plan = CycleGAN.reference_plan()["generator"]
    ours = ResnetGenerator({k.removeprefix("ab."): v for k, v in plan.items() if k.startswith("ab.")}, 9)
    reference = ReferenceResnetGenerator(64, 9)
    assert list(ours.reference_keys()) == list(reference.state_dict())  # same names, same order
    assert {k: tuple(v.shape) for k, v in reference.state_dict().items() if k in {
        "model.1.weight", "model.10.conv_block.1.weight", "model.18.conv_block.5.bias", "model.19.weight",
        "model.22.weight", "model.26.weight"}} == {
        "model.1.weight": (64, 3, 7, 7), "model.10.conv_block.1.weight": (256, 256, 3, 3),
        "model.18.conv_block.5.bias": (256,), "model.19.weight": (256, 128, 3, 3),
        "model.22.weight": (128, 64, 3, 3), "model.26.weight": (3, 64, 7, 7)}


def test_a_published_generator_translates_as_the_reference_network(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = ReferenceResnetGenerator(NGF, 2)
    model = tiny(generator_weights=str(write_generator(tmp_path / "latest_net_G.pth", reference)))
    photos = torch.rand(2, 3, 32, 36)
    with torch.no_grad():
        assert torch.allclose(model(photos), reference.translate(photos), atol=1e-6)
    assert model.weight_files == {"ab": str(tmp_path / "latest_net_G.pth")} and not model.missing_inference_weights()


def test_a_trained_pair_loads_into_both_directions(tmp_path: Path) -> None:
    torch.manual_seed(1)
    g_a, g_b = ReferenceResnetGenerator(NGF, 2), ReferenceResnetGenerator(NGF, 2)
    model = tiny(generator_ab_weights=str(write_generator(tmp_path / "latest_net_G_A.pth", g_a)),
                 generator_ba_weights=str(write_generator(tmp_path / "latest_net_G_B.pth", g_b)))
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.translate(images, "ab"), g_a.translate(images), atol=1e-6)
        assert torch.allclose(model.translate(images, "ba"), g_b.translate(images), atol=1e-6)


@pytest.mark.parametrize("variant", ["dataparallel", "pre_0.4_running_stats"])
def test_dataparallel_prefixes_and_old_instance_norm_statistics_are_dropped(tmp_path: Path, variant: str) -> None:
    torch.manual_seed(2)
    old = variant != "dataparallel"
    reference = ReferenceResnetGenerator(NGF, 2, running_stats=old)
    path = write_generator(tmp_path / "g.pth", reference, prefix="" if old else "module.")
    if old:
        assert "model.2.running_mean" in torch.load(path) and "model.10.conv_block.2.num_batches_tracked" in \
            torch.load(path)
        reference = ReferenceResnetGenerator(NGF, 2)  # the reference loads such files into norms without them
        reference.load_state_dict({k: v for k, v in torch.load(path).items()
                                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))})
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(tiny(generator_weights=str(path))(images), reference.translate(images), atol=1e-6)


@pytest.mark.parametrize(("make", "expected"), [
    (lambda: ReferenceResnetGenerator(NGF, 1).state_dict(),  # the reference's resnet_6blocks into a 9-block model
     "missing key 'model.11.conv_block.1.weight' (expected shape (16, 16, 3, 3)); the file holds a ResnetGenerator "
     "with ngf 4, 1 blocks (model.width=0.0625, model.blocks=1 fit it)"),
    (lambda: ReferenceResnetGenerator(2 * NGF, 2).state_dict(),
     "'model.1.weight' has shape (8, 3, 7, 7), expected (4, 3, 7, 7); the file holds a ResnetGenerator with ngf 8"),
    (lambda: ReferenceResnetGenerator(NGF, 2, use_dropout=True).state_dict(),
     "missing key 'model.10.conv_block.5.weight' (expected shape (16, 16, 3, 3)); the file holds a ResnetGenerator "
     "with ngf 4, 2 blocks, dropout"),
    (lambda: ReferenceUnetLike().state_dict(),
     "missing key 'model.1.weight' (expected shape (4, 3, 7, 7)); the file's first key is 'model.model.0.weight'"),
    (lambda: ReferencePatchGAN().state_dict(),
     "missing key 'model.1.weight' (expected shape (4, 3, 7, 7)); the file's first key is 'model.0.weight'"),
    (lambda: create(model_section(name="adain", width=0.125), weights=False).decoder.state_dict(),
     "missing key 'model.1.weight' (expected shape (4, 3, 7, 7))"),
    (lambda: {**ReferenceResnetGenerator(NGF, 2).state_dict(), "extra.weight": torch.zeros(2)},
     "unexpected key 'extra.weight' (shape (2,))"),
], ids=["fewer_blocks", "wider", "dropout", "unet", "discriminator", "adain_decoder", "extra_key"])
def test_other_architectures_are_refused_in_one_line_naming_the_first_mismatch(tmp_path: Path, make, expected: str
                                                                               ) -> None:  # noqa: ANN001
    path = tmp_path / "latest_net_G.pth"
    torch.save(make(), path)
    with pytest.raises(WeightsError) as err:
        tiny(generator_weights=str(path))
    message = str(err.value)
    assert "\n" not in message and expected in message
    assert message.startswith(f"{path} does not fit cyclegan's generator (ngf 4, 2 blocks, the reference's")


def test_weight_keys_are_recorded_conflicts_refused_and_model_files_never_store_them(tmp_path: Path) -> None:
    from distst import registry
    from distst.models.io import read_model_file, save_model

    keys = registry.model_record("cyclegan").weight_keys
    assert {"generator_weights", "generator_ab_weights", "generator_ba_weights"} <= set(keys)
    path = str(write_generator(tmp_path / "g.pth", ReferenceResnetGenerator(NGF, 2)))
    with pytest.raises(ConfigError, match="generator_weights and model.generator_ab_weights both name"):
        model_section(name="cyclegan", generator_weights=path, generator_ab_weights=path)
    with pytest.raises(ConfigError, match="model.init_from and model.generator_ab_weights both give"):
        tiny_config(tmp_path, model__name="cyclegan", model__init_from=path, model__generator_ab_weights=path)
    section, _ = read_model_file(save_model(tiny(generator_weights=path), tmp_path / "model.pt"))
    assert isinstance(section, CycleGANSection) and section.generator_weights is None


def test_a_published_file_given_as_a_model_file_says_which_key_takes_it(tmp_path: Path) -> None:
    from distst.models.io import read_model_file

    path = write_generator(tmp_path / "latest_net_G.pth", ReferenceResnetGenerator(NGF, 2))
    with pytest.raises(WeightsError, match="not a distst model file") as err:
        read_model_file(path)  # what model.init_from, stylize --checkpoint and export read
    assert "model.generator_weights" in str(err.value) and "\n" not in str(err.value)
