"""Study files (``jobs/**/study_*.yaml``): one model, one data set, a job per method; the runs they make.

A study names a dense job and one job per method; every run is one of them with the study's overrides, plus
``distill.weight`` for its distilled twin. The dense baseline gets as many optimizer steps as the longest
pipeline of the study (the equal-budget comparison of the lottery-ticket papers). Every mistake ends in one
line naming the key.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import Config, ConfigError, load_config, with_overrides
from ..models.io import read_model_file
from ..prune.schedule import TrainStep, schedule_class

#: The methods a study may compare (their jobs' prune.method).
METHODS = ("imp", "l2", "iccp", "cpst", "qat")
DENSE = "dense"
#: ``teacher`` values that are not files: the study's equal-budget dense model, or each run's own dense step.
STUDY_TEACHER, OWN_TEACHER = "dense", "own"


class Bench(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sizes: list[tuple[int, int]] = Field([(384, 256), (512, 512)], description="content/style sizes timed")
    threads: int = Field(2, ge=1)
    onnx: bool = Field(True, description="export every final model to ONNX and measure (E, ms) its fp32 graph")
    int8: bool = Field(False, description="also quantise each export to int8 (ONNX Runtime) and measure it")
    calibration_pairs: int = Field(8, ge=1, description="int8 calibration pairs: the images after the measured pairs")


class Measure(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: int | None = Field(None, ge=1, description="held-out pairs every final model is measured on; default: "
                              "the dense job's data.eval_pairs (more pairs: a less noisy E)")
    size: int | None = Field(None, ge=8, description="their centre-crop size; default: data.eval_size or data.crop")


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpus: float = Field(1.0, gt=0, description="per run (also its torch threads)")
    gpus: float = Field(0.0, ge=0, description="per run (one process each)")


class StudyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    dense: str = Field(description="the dense job (the equal-budget baseline and the default teacher's model)")
    methods: dict[str, str] = Field(description="method -> its job file")
    distill: list[bool] | dict[str, list[bool]] = Field(
        [False], description="each method with (true) and/or without (false) distillation; or per run name")
    distill_weight: float = Field(1.0, gt=0)
    teacher: str = Field(STUDY_TEACHER, description="what every distilled run learns from: 'dense' (the study's "
                         "equal-budget dense model, trained first), 'own' (each run's own dense step) or a model file")
    overrides: dict[str, Any] = Field({}, description="dotted overrides for every run")
    run_overrides: dict[str, dict[str, Any]] = Field({}, description="dense or a method -> its own overrides")
    measure: Measure = Field(default_factory=Measure)
    bench: Bench = Field(default_factory=Bench)
    resources: Resources = Field(default_factory=Resources)
    concurrency: int = Field(1, ge=1)


@dataclass(frozen=True)
class StudyRun:
    name: str
    method: str
    distill: bool
    cfg: Config
    #: Learns from the study's dense run (whose model file exists only once that run is done: it runs later).
    learns_from_dense: bool = False


@dataclass(frozen=True)
class Study:
    name: str
    file: StudyFile
    runs: list[StudyRun]

    def measuring(self) -> Config:
        """The dense run's config with the study's ``measure`` pairs and size: every final model is measured (and
        int8 calibrated after those pairs) with it. Only measuring reads it, so changing it retrains nothing."""
        dense, measure = self.runs[0].cfg, self.file.measure
        values = {f"data.{key}": value for key, value in (("eval_pairs", measure.pairs), ("eval_size", measure.size))
                  if value is not None}
        return with_overrides(dense, values) if values else dense


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(first["loc"][-1]), StudyFile.model_fields, n=1)
        return f"{key}: unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    return f"{key}: {first['msg']}"


def pipeline_steps(cfg: Config) -> int:
    """Optimizer steps of a run's whole pipeline (every train step of its schedule; a one-run method: train.steps)."""
    cls = schedule_class(cfg)
    if cls is None:
        return cfg.train.steps
    # Steps only: the schedule is instantiated without running it (nothing is written).
    return sum(s.steps for s in cls(cfg, Path("unused")).steps() if isinstance(s, TrainStep))


def _job(path: str, key: str, overrides: dict[str, Any], base: Path) -> Config:
    # From the working directory, else beside the study file or any folder above it (a repo-relative path).
    tried = [Path(path)] + [folder / path for folder in (base.resolve(), *base.resolve().parents)]
    full = next((p for p in tried if p.exists()), tried[0])
    try:
        return load_config(full, overrides)
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}") from None


def _check_teacher(path: str, model: str) -> None:
    try:
        section, _ = read_model_file(path)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"teacher: {path} is not a model file ({err})") from None
    if section.name != model:
        raise ConfigError(f"teacher: {path} is a {section.name} model; this study's model is {model}")


def _distilled(cfg: Config, weight: float, teacher: str) -> Config:
    values: dict[str, Any] = {"distill.weight": weight}
    if teacher not in (STUDY_TEACHER, OWN_TEACHER):
        values["distill.teacher"] = teacher
    return with_overrides(cfg, values)  # the study's dense model is named when the run starts (run_one)


def build_study(tree: dict[str, Any], base: Path = Path(".")) -> Study:
    """The study's runs, every job loaded and checked; ``base``: where relative job paths are looked up too."""
    try:
        spec = StudyFile.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None
    for method in spec.methods:
        if method == DENSE:
            raise ConfigError("methods.dense: the dense run is the study's `dense` job, not a method")
        if method not in METHODS:
            close = difflib.get_close_matches(method, METHODS, n=1)
            raise ConfigError(f"methods.{method}: unknown method (one of {', '.join(METHODS)})"
                              + (f"; did you mean {close[0]!r}?" if close else ""))
    choices = spec.distill if isinstance(spec.distill, dict) else {m: spec.distill for m in spec.methods}
    if any(choices.get(DENSE, [])):
        raise ConfigError("distill.dense: the equal-budget dense run cannot be distilled (it has no teacher)")
    for name in set(choices) - set(spec.methods) - {DENSE}:
        raise ConfigError(f"distill.{name}: not a method of this study ({', '.join(spec.methods)})")
    for name in set(spec.run_overrides) - set(spec.methods) - {DENSE}:
        raise ConfigError(f"run_overrides.{name}: not a run of this study (dense, {', '.join(spec.methods)})")
    dense = _job(spec.dense, "dense", {**spec.overrides, **spec.run_overrides.get(DENSE, {})}, base)
    if dense.prune.method != "none":
        raise ConfigError(f"dense: {spec.dense} has prune.method={dense.prune.method}; the dense job trains plainly")
    model = dense.model.name
    if spec.teacher not in (STUDY_TEACHER, OWN_TEACHER):
        _check_teacher(spec.teacher, model)
    runs: list[StudyRun] = []
    for method, path in spec.methods.items():
        cfg = _job(path, f"methods.{method}", {**spec.overrides, **spec.run_overrides.get(method, {})}, base)
        if cfg.prune.method != method:
            raise ConfigError(f"methods.{method}: {path} has prune.method={cfg.prune.method}")
        if cfg.model.name != model:
            raise ConfigError(f"methods.{method}: {path} trains {cfg.model.name}; the study's model is {model}")
        for distill in choices.get(method, [False]):
            if distill and spec.teacher == OWN_TEACHER and schedule_class(cfg) is None:
                raise ConfigError(f"distill.{method}: with teacher: own a one-run method has no dense step to "
                                  "learn from (use teacher: dense or a model file)")
            run_cfg = _distilled(cfg, spec.distill_weight, spec.teacher) if distill else cfg
            runs.append(StudyRun(f"{method}_distill" if distill else method, method, distill, run_cfg,
                                 learns_from_dense=distill and spec.teacher == STUDY_TEACHER))
    budget = max([pipeline_steps(r.cfg) for r in runs], default=dense.train.steps)
    # The baseline has no teacher of its own: it is never distilled, whatever `distill` lists.
    runs.insert(0, StudyRun(DENSE, DENSE, False, with_overrides(dense, {"train.steps": budget})))
    return Study(spec.name or "study", spec, runs)


def is_study_file(path: str | Path) -> bool:
    """Whether ``path`` is a study file (it names a ``dense`` job and ``methods``), not a job."""
    try:
        tree = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False  # not readable as a study: the job loader gives the error
    return isinstance(tree, dict) and "dense" in tree and "methods" in tree


def load_study(path: str | Path) -> Study:
    """Read and check a study file (relative job paths: from the working directory, else beside the file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {path} does not exist")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping (dense, methods, distill, ...)")
    tree.setdefault("name", path.stem)
    return build_study(tree, path.parent)
