"""The config tree: overrides, clear errors that name keys, and run directories derived from a hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from distst.config import ConfigError, build_config, load_config, parse_override, with_overrides

REPO = Path(__file__).resolve().parents[2]


def test_overrides_are_typed() -> None:
    cfg = build_config({}, ["train.lr=3e-4", "model.width=0.25", "prune.method=imp", "prune.scope=[encoder,decoder]",
                            "model.vgg_weights=null", "data.flip=true"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.width == 0.25 and cfg.prune.scope == ["encoder", "decoder"]
    assert cfg.model.vgg_weights is None and cfg.data.flip is True


def test_unknown_key_names_key_and_valid_choices() -> None:
    with pytest.raises(ConfigError) as err:
        build_config({}, ["train.lrr=1"])
    message = str(err.value)
    assert "train.lrr" in message and "did you mean 'train.lr'" in message and "lr_decay" in message


def test_unknown_key_in_yaml_is_reported(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("model:\n  name: adain\n  widht: 0.5\n")
    with pytest.raises(ConfigError, match=r"model.widht: unknown key.*valid keys in model \(model.name=adain\): name, width"):
        load_config(job)


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"train.steps: .*valid integer.*'many'"):
        build_config({}, ["train.steps=many"])
    with pytest.raises(ConfigError, match=r"model.name: unknown model 'vgg'; registered: (.*, )?adain, .*mccnet, sanet"):
        build_config({}, ["model.name=vgg"])
    with pytest.raises(ConfigError, match="model.width"):
        build_config({}, ["model.width=-1"])


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="train.lr is a value, not a section"):
        build_config({}, ["train.lr.x=1"])


def test_loss_weights_are_the_models_own_defaults() -> None:
    assert build_config({}).model.style_weight == 10.0
    assert build_config({}, ["model.name=sanet"]).model.style_weight == 3.0
    assert build_config({}, ["model.name=sanet", "model.style_weight=5"]).model.style_weight == 5.0
    assert with_overrides(build_config({}), {"model.name": "sanet"}).model.style_weight == 3.0
    with pytest.raises(ConfigError, match=r"model.identity1_weight: unknown key.*\(model.name=adain\)"):
        build_config({}, ["model.identity1_weight=3"])  # SANet's, not AdaIN's


def test_run_dir_is_stable_and_ignores_run_and_tracking(tmp_path: Path) -> None:
    job = tmp_path / "myjob.yaml"
    job.write_text("train:\n  steps: 10\n")
    first = load_config(job)
    assert first.run_dir() == Path("runs/myjob") / first.config_hash()
    assert load_config(job).run_dir() == first.run_dir()
    assert load_config(job, ["tracking.backend=none"]).run_dir() == first.run_dir()
    assert load_config(job, ["train.lr=1e-3"]).run_dir() != first.run_dir()
    assert load_config(job, [f"run.out_dir={tmp_path / 'x'}"]).run_dir() == tmp_path / "x"


def test_resolved_config_round_trips_through_yaml() -> None:
    import yaml

    cfg = build_config({}, ["model.name=sanet", "train.steps=5"])
    again = build_config(yaml.safe_load(cfg.to_yaml()))
    assert again.model_dump() == cfg.model_dump() and again.config_hash() == cfg.config_hash()


@pytest.mark.parametrize("job", sorted(p.relative_to(REPO) for p in (REPO / "jobs").rglob("*.yaml")))
def test_shipped_jobs_validate(job: Path) -> None:
    from distst.study.spec import is_study_file, load_study

    if is_study_file(REPO / job):
        assert len(load_study(REPO / job).runs) >= 2  # the dense baseline and at least one method
    else:
        load_config(REPO / job)


def test_missing_job_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("jobs/nope.yaml")
