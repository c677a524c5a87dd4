"""The one typed config tree for every distst command.

A job is a YAML file in ``jobs/`` plus dotted ``key=value`` overrides (``train.lr=3e-4``).
Validation is pydantic's (Literal choices, numeric coercion, ``extra="forbid"``); this module only
turns its errors into messages that name the key and the valid choices, and derives run directories.
The dotted keys are a public contract: Ray Tune search spaces and users' scripts name them.

The ``model`` and ``prune`` sections are open: each model and each compression method registers its own
section class (``distst.registry``), and ``model.name`` / ``prune.method`` choose which one validates the
rest of the section, so ``prune.rate`` is valid for IMP and a slimming method brings its own keys.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from . import registry
from .errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    """What every model's config section has. Each model registers a subclass with its own keys (loss weights,
    weight files...), chosen by ``model.name``; see ``distst.registry``."""

    #: Named parameter groups of the model (pruning scopes, counts).
    groups: ClassVar[tuple[str, ...]] = ()
    #: Groups pruned by default (``prune.scope`` when not given).
    default_prune_scope: ClassVar[tuple[str, ...]] = ()
    #: The model class, set by its ``@registry.model`` decorator: it checks plans (``resolve_plan``).
    model_class: ClassVar[Any] = None

    name: str
    width: float = Field(1.0, gt=0, le=4, description="channel multiplier of the default plan; 1.0 = reference")
    plan: dict[str, dict[str, int]] | None = Field(
        None, description="output channels per layer by group (a physically slimmed model's); partial plans "
                          "override the default plan's layers")
    init_from: str | None = Field(None, description="a distst model file to start from: its plan and weights")

    @model_validator(mode="after")
    def _check_plan(self) -> ModelSection:
        if self.plan is not None and self.model_class is not None:
            self.model_class.resolve_plan(self)  # raises PlanError (a ValueError) naming the layer
        return self

    def resolve(self, cfg: Config) -> None:
        """Resolve values that depend on other sections (e.g. on the pruning method)."""

    def held_out_images(self, cfg: Config) -> tuple[str, int]:
        """The key and count of held-out images of each set the job reads besides ``data.eval_pairs`` (a GAN's FID
        set), so that the preflight can check the shards hold them; ("", 0) for none."""
        return "", 0


class MethodSection(Section):
    """What every compression method's section has; each method registers a subclass chosen by ``prune.method``
    with ``@registry.method(...)``, whose record holds its command and capabilities."""

    method: str

    def resolve(self, cfg: Config) -> None:
        """Resolve and check values against the model (e.g. a scope against its groups)."""

    def input_problems(self, cfg: Config, run_dir: Path) -> list[str]:
        """One line per problem with the files the method reads (the preflight's, before anything starts)."""
        return []


def _plain_training(cfg: Config) -> None:
    return None  # distst.train runs without a method


@registry.method(factory=_plain_training)
class NoMethod(MethodSection):
    """Plain training, no compression."""

    method: Literal["none"] = "none"


class DataConfig(Section):
    content: str = Field("sample:content-{000000..000001}.tar",
                         description="content shard URLs (brace notation); sample: = the bundled sample shards")
    style: str = Field("sample:style-{000000..000001}.tar", description="style shard URLs (brace notation)")
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


#: ``train.collective_timeout``'s default, and the timeout of process groups started without a config.
DEFAULT_COLLECTIVE_TIMEOUT_S = 600
#: The hang watchdog's defaults (``train.hang_factor``, ``train.hang_min_s``; ``distst.train.watchdog``): below the
#: collective timeout, so that a hung peer is named with its step before a collective gives up.
DEFAULT_HANG_FACTOR = 20.0
DEFAULT_HANG_MIN_S = 300.0
#: ``train`` keys that change how a run waits for a hung or slow rank, never what it computes: absent from dumps
#: while default (configs, their hashes and run directories stay what they were before each key), never in the
#: run's identity.
WAITING_KEYS = {"collective_timeout": DEFAULT_COLLECTIVE_TIMEOUT_S, "hang_factor": DEFAULT_HANG_FACTOR,
                "hang_min_s": DEFAULT_HANG_MIN_S}


class TrainConfig(Section):
    steps: int = Field(160_000, ge=1)
    lr: float = Field(1e-4, gt=0)
    lr_decay: float = Field(5e-5, ge=0, description="lr / (1 + lr_decay * step), as the references")
    seed: int = 0
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    eval_every: int = Field(1000, ge=1)
    log_every: int = Field(10, ge=1)
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms (bitwise resume on CPU)")
    collective_timeout: float = Field(
        DEFAULT_COLLECTIVE_TIMEOUT_S, ge=1,
        description="seconds a collective waits for a missing rank (hung, stopped) before every rank fails")
    hang_factor: float = Field(
        DEFAULT_HANG_FACTOR, ge=0,
        description="a training step taking this many times the median of the recent steps (and at least "
                    "train.hang_min_s) ends the job with exit code 75, for a requeue from the last checkpoint; "
                    "evaluations and checkpoints do not count; 0: no hang watchdog")
    hang_min_s: float = Field(DEFAULT_HANG_MIN_S, gt=0,
                              description="seconds a training step may always take before it counts as hung")

    @model_serializer(mode="wrap")
    def _without_default_timeout(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Absent while default: configs, their hashes and run directories stay what they were before the keys.
        data = handler(self)
        for key, default in WAITING_KEYS.items():
            if getattr(self, key) == default:
                data.pop(key, None)
        return data


class DeepSpeedConfig(Section):
    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on GPUs that have it, fp32 on CPU")
    communication_dtype: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="dtype of the gradient all-reduce (fp32: exact sums whatever the training precision)")
    gradient_accumulation_steps: int = Field(1, ge=1)
    gradient_clipping: float = Field(0.0, ge=0)
    extra: dict[str, Any] = Field(default_factory=dict, description="further DeepSpeed config keys, passed through")


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

    @field_validator("name")
    @classmethod
    def _name_stays_inside_root(cls, name: str | None) -> str | None:
        # The name is one directory under run.root: a separator or '..' would write elsewhere.
        if name is not None and (not name.strip() or "/" in name or "\\" in name or name in (".", "..")):
            raise ValueError(f"run.name={name!r}: must be a plain directory name (no '/', '\\', '.' or '..'); "
                             "use run.out_dir to choose another place")
        return name


class DistillConfig(Section):
    """``distill.*``: distillation from the dense teacher, for any method's training steps (``distst.distill``).

    The teacher runs frozen beside the student on the same batch: the loss pulls the student's output image
    (and any ``features`` the model records) towards the teacher's. Off by default."""

    weight: float = Field(0.0, ge=0, description="weight of the MSE between the student's and the teacher's "
                                                 "output images (0 with no features: distillation off)")
    features: list[str] = Field([], description="features the model records (e.g. transform) matched too, "
                                                "through a 1x1 adapter where the student has fewer channels")
    feature_weight: float = Field(1.0, ge=0, description="weight of each feature's MSE")
    teacher: str | None = Field(None, description="the teacher's model file; default: the run's own dense step "
                                                  "(IMP level 0, the channel methods' dense stage)")

    @property
    def enabled(self) -> bool:
        return self.weight > 0 or (bool(self.features) and self.feature_weight > 0)


class TemporalConfig(Section):
    """``temporal.*``: temporal consistency, measured at every evaluation and, optionally, trained for
    (``distst.video``).

    The temporal error is Lai et al.'s warping error of the outputs on clips with known optical flow: a fixed
    set of synthetic clips (``eval_clips``), and a user's clips with flow files (``clips``). The two stability
    losses are off by default and any style-transfer model can switch them on."""

    eval_clips: int = Field(2, ge=0, le=16, description="synthetic clips with exact flow measured at every "
                                                        "evaluation (0: no temporal error)")
    eval_frames: int = Field(4, ge=2, le=32, description="frames of each synthetic clip")
    eval_size: int | None = Field(None, ge=16, description="side of the synthetic clips' frames; default: the "
                                                           "held-out pairs' size (data.eval_size or data.crop)")
    clips: list[str] = Field([], description="a user's clips with flow, each a directory holding frames/ and "
                                             "flow/ (Sintel layout; optional masks/ or occlusions/, flow_backward/)")
    noise_weight: float = Field(0.0, ge=0, description="MCCNet's noise stability for any model: MSE between the "
                                                       "outputs of the content and of the content plus noise")
    noise_std: tuple[float, float] = Field((0.01, 0.02), description="range the noise's std is drawn from, once "
                                                                     "per batch (MCCNet's reference)")
    compound_weight: float = Field(0.0, ge=0, description="ReReVST's compound regularisation: L1 between the warped "
                                                          "output and the output of the warped, noisy content")
    compound_motion: float = Field(8.0, ge=0, description="largest component of the smooth random flow, pixels")
    compound_shift: int = Field(10, ge=0, description="a random global shift of up to this many pixels is added")
    compound_noise: float = Field(0.001, ge=0, description="std of the added Gaussian noise (drawn in [s, 2s])")

    @model_validator(mode="after")
    def _ordered_range(self) -> TemporalConfig:
        low, high = self.noise_std
        if not 0 <= low <= high:
            raise ValueError(f"temporal.noise_std: need 0 <= low <= high (got {list(self.noise_std)})")
        return self

    @property
    def trains(self) -> bool:
        """Whether a stability loss is on."""
        return self.noise_weight > 0 or self.compound_weight > 0


class Config(Section):
    """The whole job. ``model`` and ``prune`` are the sections registered for ``model.name`` and
    ``prune.method``: ``build_config`` validates with a class made for that pair (see ``config_class``)."""

    model: ModelSection
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    prune: MethodSection = Field(default_factory=NoMethod)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    temporal: TemporalConfig = Field(default_factory=TemporalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    # The tree it was built from, before defaults were resolved: ``with_overrides`` re-resolves from it.
    _source: dict[str, Any] | None = PrivateAttr(default=None)

    @model_serializer(mode="wrap")
    def _without_default_sections(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Absent while default: configs, their hashes and run directories stay what they were before these
        # sections existed.
        data = handler(self)
        for name, section in (("distill", DistillConfig), ("temporal", TemporalConfig)):
            if getattr(self, name) == section():
                data.pop(name, None)
        return data

    @model_validator(mode="after")
    def _resolve_across_sections(self) -> Config:
        self.model.resolve(self)
        self.prune.resolve(self)
        return self

    # --- derived values -------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """What defines a run's results: everything but where it is written and how it is tracked; weight
        files and shards by their content's sha256, not their path (moving them keeps the run's hash)."""
        from .data.checksums import checksums  # reads files: only when an identity is asked for

        tree = self.model_dump(mode="json", exclude={"run", "tracking"})
        for key in WAITING_KEYS:  # how long to wait for a hung rank changes no result
            tree["train"].pop(key, None)
        for key, digest in checksums(self).items():
            if digest is not None:  # a remote or missing file: its path stands for it
                section, name = key.split(".")
                tree[section][name] = digest
        return tree

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


# The keys that choose a section's class: applied before any other override.
_CHOOSERS = ("model.name", "prune.method")


@functools.cache
def config_class(model: str, method: str) -> type[Config]:
    """``Config`` with the sections registered for ``model`` and ``method`` (unknown names: a ConfigError)."""
    registry.load_builtins()
    model_section = _registered(registry.MODELS, model, "model.name", "model")
    method_section = _registered(registry.METHODS, method, "prune.method", "method")
    return create_model(  # type: ignore[call-overload]
        f"Config_{model}_{method}", __base__=Config,
        model=(model_section, Field(default_factory=model_section)),
        prune=(method_section, Field(default_factory=method_section)),
    )


def _registered(table: Mapping[str, Any], name: Any, key: str, kind: str) -> type[Section]:
    """The config section of the record ``table`` holds under ``name`` (``registry.MODELS`` / ``METHODS``)."""
    if not isinstance(name, str) or name not in table:
        near = difflib.get_close_matches(str(name), list(table), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"{key}: unknown {kind} {name!r}{hint}; registered: {', '.join(sorted(table))}")
    return table[name].section


def _section_at(path: tuple[str, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic class that holds the key at ``path`` (None if the path leaves the tree)."""
    section: type[BaseModel] = root
    for part in path:
        field = section.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        section = annotation
    return section


def _unknown_key_message(path: tuple[str, ...], root: type[BaseModel]) -> str:
    parent = _section_at(path[:-1], root)
    key = ".".join(path)
    if parent is None:
        return f"{key}: unknown key"
    valid = _valid_keys(parent)
    near = difflib.get_close_matches(path[-1], valid, n=1)
    hint = f" (did you mean '{'.'.join((*path[:-1], near[0]))}'?)" if near else ""
    where = ".".join(path[:-1]) or "the top level"
    chosen = _chosen_by(path[:-1], root)
    return f"{key}: unknown key{hint}; valid keys in {where}{chosen}: {', '.join(valid)}"


def _chosen_by(path: tuple[str, ...], root: type[BaseModel]) -> str:
    """' (model.name=<name>)' when the section at ``path`` is the one chosen by a name."""
    section = _section_at(path, root)
    for key in _CHOOSERS:
        if path == tuple(key.split(".")[:1]) and section is not None:
            field = section.model_fields.get(key.split(".")[1])
            if field is not None and field.default is not None:
                return f" ({key}={field.default})"
    return ""


def _format_validation_error(err: ValidationError, root: type[BaseModel]) -> str:
    lines = []
    for item in err.errors():
        path = tuple(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(_unknown_key_message(path, root))
            continue
        if not path:  # a check across sections
            lines.append(str(item["msg"]).removeprefix("Value error, "))
            continue
        got = item.get("input")
        shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
        if item["type"] == "value_error":  # our own checks: their message names the key already
            lines.append(str(item["msg"]).removeprefix("Value error, "))
            continue
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


def _set_dotted(tree: dict[str, Any], key: str, value: Any, root: type[BaseModel]) -> None:
    """Set ``a.b.c`` in a nested dict, checking each part against the schema (free-form dicts excepted)."""
    parts = key.split(".")
    section: type[BaseModel] | None = root
    node = tree
    for depth, part in enumerate(parts):
        if section is not None:
            if part not in section.model_fields:
                raise ConfigError(_unknown_key_message(tuple(parts[: depth + 1]), root))
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


def _chosen_names(tree: Mapping[str, Any]) -> tuple[Any, Any]:
    model, prune = tree.get("model") or {}, tree.get("prune") or {}
    if not isinstance(model, Mapping) or not isinstance(prune, Mapping):
        raise ConfigError("the model and prune sections must be mappings of keys")
    registry.load_builtins()
    return model.get("name", registry.DEFAULTS["model.name"]), prune.get("method", registry.DEFAULTS["prune.method"])


def build_config(tree: Mapping[str, Any], overrides: Mapping[str, Any] | Iterable[str] = ()) -> Config:
    """Validate a nested mapping plus dotted overrides (a mapping, or ``key=value`` strings).

    ``model.name`` and ``prune.method`` are applied first: they choose the sections the other keys are
    checked against.
    """
    merged: dict[str, Any] = json.loads(json.dumps(dict(tree)))  # deep copy of plain data
    items = list(overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides))
    for key, value in items:
        if key in _CHOOSERS:
            section, field = key.split(".")
            node = merged.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{section} is a section, not a value")
            node[field] = value
    root = config_class(*_chosen_names(merged))
    for key, value in items:
        if key not in _CHOOSERS:
            _set_dotted(merged, key, value, root)
    source = json.loads(json.dumps(merged))
    try:
        config = root.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, root)) from None
    config._source = source
    return config


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


def model_section(**values: Any) -> ModelSection:
    """The section registered for ``values['name']`` (default: the registry's default model), validated."""
    registry.load_builtins()
    cls = _registered(registry.MODELS, values.get("name", registry.DEFAULTS["model.name"]), "model.name",
                      "model")
    try:
        return cls.model_validate(values)  # type: ignore[return-value]
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, cls).replace("invalid config", "invalid model settings")) \
            from None


def with_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """A copy of ``config`` with dotted overrides (what a Ray Tune trial applies).

    Built from the tree ``config`` came from, so derived values (a model's reference loss weights,
    ``model.encoder=auto``, the default pruning scope) are resolved again for the new model or method; keys
    of the old model's or method's section that the new one lacks are dropped.
    """
    source = config._source if config._source is not None else config.model_dump(mode="json")
    tree = json.loads(json.dumps(source))
    old = _chosen_names(tree)
    for key, value in overrides.items():
        if key in _CHOOSERS:
            section, field = key.split(".")
            tree.setdefault(section, {})[field] = value
    new = config_class(*_chosen_names(tree))
    if _chosen_names(tree) != old:
        for section in ("model", "prune"):
            fields = new.model_fields[section].annotation.model_fields  # type: ignore[union-attr]
            tree[section] = {k: v for k, v in (tree.get(section) or {}).items() if k in fields}
    return build_config(tree, {k: v for k, v in overrides.items() if k not in _CHOOSERS})

