"""The one typed config tree for every distst command.

A job is a YAML file in ``jobs/`` plus dotted ``key=value`` overrides (``train.lr=3e-4``).
Validation is pydantic's (Literal choices, numeric coercion, ``extra="forbid"``); this module only
turns its errors into messages that name the key and the valid choices, and derives run directories.
The dotted keys are a public contract: Ray Tune search spaces and users' scripts name them.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

GroupName = Literal["encoder", "transform", "decoder"]
GROUPS: tuple[str, ...] = ("encoder", "transform", "decoder")

# The reference style weight differs per model (AdaIN 10, SANet 3); None in a job means "the reference".
REFERENCE_STYLE_WEIGHT = {"adain": 10.0, "sanet": 3.0}


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and what would be valid."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: Literal["adain", "sanet"] = "adain"
    width: float = Field(1.0, gt=0, le=4, description="channel multiplier for every hidden width; 1.0 = reference")
    vgg_weights: str | None = Field(None, description="local vgg_normalised.pth (or a converted torchvision VGG-19)")
    decoder_weights: str | None = Field(None, description="local decoder .pth in the reference layout")
    transform_weights: str | None = Field(None, description="local transform .pth (SANet's transformer_iter_*.pth)")
    encoder: Literal["auto", "frozen", "trainable"] = Field(
        "auto", description="frozen = reference set-up; trainable = 'plus' set-up with a separate frozen loss VGG; "
                            "auto = trainable for IMP (as the lottery-ticket paper), else frozen"
    )


class DataConfig(Section):
    content: str = Field("shards/sample/content-{000000..000001}.tar", description="content shard URLs (brace notation)")
    style: str = Field("shards/sample/style-{000000..000001}.tar", description="style shard URLs (brace notation)")
    crop: int = Field(256, ge=8)
    batch_size: int = Field(8, ge=1)
    workers: int = Field(2, ge=0)
    seed: int = 0
    shuffle_buffer: int = Field(1000, ge=0)
    flip: bool = False
    eval_content: str | None = Field(None, description="held-out content shards; default: data.content")
    eval_style: str | None = Field(None, description="held-out style shards; default: data.style")
    eval_pairs: int = Field(8, ge=1, description="number of fixed held-out content x style pairs")
    eval_size: int | None = Field(None, ge=8, description="center-crop size of held-out images; default: data.crop")


class TrainConfig(Section):
    steps: int = Field(160_000, ge=0)
    lr: float = Field(1e-4, gt=0)
    lr_decay: float = Field(5e-5, ge=0, description="lr / (1 + lr_decay * step), as the references")
    content_weight: float = Field(1.0, ge=0)
    style_weight: float | None = Field(None, ge=0, description="None: the model's reference (AdaIN 10, SANet 3)")
    identity1_weight: float = Field(50.0, ge=0, description="SANet identity loss on images")
    identity2_weight: float = Field(1.0, ge=0, description="SANet identity loss on features")
    seed: int = 0
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    eval_every: int = Field(1000, ge=1)
    log_every: int = Field(10, ge=1)
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms (bitwise resume on CPU)")


class DeepSpeedConfig(Section):
    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on GPUs that have it, fp32 on CPU")
    gradient_accumulation_steps: int = Field(1, ge=1)
    gradient_clipping: float = Field(0.0, ge=0)
    extra: dict[str, Any] = Field(default_factory=dict, description="further DeepSpeed config keys, passed through")


class PruneConfig(Section):
    method: Literal["none", "imp"] = "none"
    rate: float = Field(0.2, gt=0, lt=1, description="fraction of the remaining weights pruned per round")
    rounds: int = Field(0, ge=0, description="pruning levels after the dense level 0")
    rewind_step: int = Field(0, ge=0, description="step of the dense run whose weights are rewound to")
    scope: list[GroupName] = Field(default_factory=lambda: list(GROUPS))
    layerwise: bool = Field(False, description="prune the same rate in every layer instead of globally")
    control: Literal["none", "random_prune", "random_reinit", "one_shot"] = "none"
    matching_tolerance: float = Field(0.0, ge=0, description="relative slack on the dense E for 'matching'")


class TrackingConfig(Section):
    backend: Literal["wandb", "none"] = "wandb"
    project: str = "distst"
    entity: str | None = None
    mode: Literal["auto", "online", "offline"] = Field("auto", description="auto: online with an API key, else offline")
    image_every: int = Field(1000, ge=1)
    group: str | None = None


class RunConfig(Section):
    name: str | None = Field(None, description="job name; default: the YAML file's stem")
    out_dir: str | None = Field(None, description="run directory; default runs/<name>/<config hash>")
    root: str = "runs"


class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _resolve_model_defaults(self) -> Config:
        if self.train.style_weight is None:
            self.train.style_weight = REFERENCE_STYLE_WEIGHT[self.model.name]
        if self.model.encoder == "auto":
            self.model.encoder = "trainable" if self.prune.method == "imp" else "frozen"
        return self

    # --- derived values -------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """What defines a run's results: everything but where it is written and how it is tracked."""
        return self.model_dump(mode="json", exclude={"run", "tracking"})

    def config_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def run_dir(self) -> Path:
        if self.run.out_dir:
            return Path(self.run.out_dir)
        return Path(self.run.root) / (self.run.name or "job") / self.config_hash()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --- building configs ----------------------------------------------------------------------

def _valid_keys(section: type[BaseModel]) -> list[str]:
    return list(section.model_fields)


def _section_at(path: tuple[str, ...]) -> type[BaseModel] | None:
    """The pydantic class that holds the key at ``path`` (None if the path leaves the tree)."""
    section: type[BaseModel] = Config
    for part in path:
        field = section.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        section = annotation
    return section


def _unknown_key_message(path: tuple[str, ...]) -> str:
    parent = _section_at(path[:-1])
    key = ".".join(path)
    if parent is None:
        return f"{key}: unknown key"
    valid = _valid_keys(parent)
    near = difflib.get_close_matches(path[-1], valid, n=1)
    hint = f" (did you mean '{'.'.join((*path[:-1], near[0]))}'?)" if near else ""
    where = ".".join(path[:-1]) or "the top level"
    return f"{key}: unknown key{hint}; valid keys in {where}: {', '.join(valid)}"


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        path = tuple(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(_unknown_key_message(path))
            continue
        got = item.get("input")
        shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
        lines.append(f"{'.'.join(path)}: {item['msg']}{shown}")
    return "invalid config:\n  " + "\n  ".join(lines)


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.lr=3e-4'`` -> ``('train.lr', 3e-4)``; values are YAML scalars/lists (``[a,b]``, ``null``, ``true``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value (e.g. train.lr=3e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, checking each part against the schema (free-form dicts excepted)."""
    parts = key.split(".")
    section: type[BaseModel] | None = Config
    node = tree
    for depth, part in enumerate(parts):
        if section is not None:
            if part not in section.model_fields:
                raise ConfigError(_unknown_key_message(tuple(parts[: depth + 1])))
            annotation = section.model_fields[part].annotation
            is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
            is_free_dict = getattr(annotation, "__origin__", None) is dict
            if depth < len(parts) - 1 and not (is_section or is_free_dict):
                raise ConfigError(f"{'.'.join(parts[: depth + 1])} is a value, not a section; cannot set {key}")
            section = annotation if is_section else None
        if depth == len(parts) - 1:
            node[part] = value
        else:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[: depth + 1])} is a value, not a section; cannot set {key}")
            node = child


def build_config(tree: Mapping[str, Any], overrides: Mapping[str, Any] | Iterable[str] = ()) -> Config:
    """Validate a nested mapping plus dotted overrides (a mapping, or ``key=value`` strings)."""
    merged: dict[str, Any] = json.loads(json.dumps(dict(tree)))  # deep copy of plain data
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    for key, value in items:
        _set_dotted(merged, key, value)
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def load_config(path: str | Path, overrides: Mapping[str, Any] | Iterable[str] = ()) -> Config:
    """Load a job YAML with overrides; the job name defaults to the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"job file {path} does not exist (see jobs/ for the shipped ones)")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping of sections ({', '.join(Config.model_fields)})")
    tree.setdefault("run", {}).setdefault("name", path.stem)
    return build_config(tree, overrides)


def with_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """A copy of ``config`` with dotted overrides (what a Ray Tune trial applies)."""
    tree = config.model_dump(mode="json")
    if "train.style_weight" not in overrides and "model.name" in overrides:
        tree["train"]["style_weight"] = None  # re-resolve the reference weight for the new model
    return build_config(tree, overrides)
