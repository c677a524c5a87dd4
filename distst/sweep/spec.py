"""Sweep files (``tune/*.yaml``): a base job, fixed dotted overrides, a search space and how to search it.

A sweep names the same dotted keys as a job's command line (``prune.rate``, ``train.seed``); every key and
every value in the space is checked against the job's config tree before Ray starts, so a typo fails at
once with the config's own "unknown key (did you mean ...)" message. Keys of the sweep file itself get the
same treatment. The base job's kind (``kinds``: IMP or channel pruning) says what the trials report.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import Config, ConfigError, load_config, with_overrides
from .kinds import TrialKind, kind_of

# One key per domain, e.g. {grid: [0.2, 0.3]} or {loguniform: [1e-4, 1e-2]}.
DOMAINS = ("grid", "choice", "uniform", "loguniform", "randint", "value")
RANGE_DOMAINS = ("uniform", "loguniform", "randint")
#: Up to this many combinations of the space's listed values are built to find the longest trial (ASHA's max_t);
#: beyond it each key is varied alone (configs are cheap, but not free).
MAX_COMBINATIONS = 256


class SweepSection(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Objective(SweepSection):
    metric: str = Field("extreme_sparsity", description="a metric every trial reports (its kind's metrics)")
    mode: Literal["min", "max"] = "max"
    macs_budget: int | None = Field(None, ge=1, description="channel pruning: MACs of one stylisation at the job's "
                                                            "data.eval_size (or crop) that budgeted_error allows")

    @field_validator("macs_budget", mode="before")
    @classmethod
    def _exponent_notation(cls, value: object) -> object:
        # YAML reads 1.5e9 (no sign in the exponent) as a string; an integral number in any notation is meant.
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return value
            return int(number) if number.is_integer() else number
        return value


class Search(SweepSection):
    algorithm: Literal["grid", "random", "optuna"] = Field(
        "grid", description="grid/random: Tune's variant generator (grid keys are crossed, the rest sampled); "
                            "optuna: TPE through ray.tune.search.optuna")
    samples: int = Field(1, ge=1, description="grid: repeats of the whole grid; otherwise: number of trials")
    seed: int | None = Field(0, description="seed of the sampler (optuna, random)")


class Scheduler(SweepSection):
    name: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(1, ge=1, description="Tune iterations (IMP levels, channel-pruning train stages) "
                                                   "every trial runs before ASHA may stop it")
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="Tune iterations of the longest trial; default: from the "
                                                       "job and the space (IMP: prune.rounds + 1)")


class Resources(SweepSection):
    cpus: float = Field(1.0, gt=0, description="CPUs per trial (all its processes together)")
    gpus: float = Field(0.0, ge=0, description="GPUs per trial (all its processes together)")
    processes: int = Field(1, ge=1, description=">1: a Ray Train TorchTrainer with this many workers (gloo/NCCL)")


class FaultInjection(SweepSection):
    """Test-only: make chosen trials fail once, right after reporting a Tune iteration (IMP level, channel-pruning
    train stage; 0 = the first), to exercise retries."""

    fail_once_after_level: int = Field(0, ge=0)
    trials: list[int] = Field(default_factory=lambda: [0], description="trial indices (order of creation)")


class SweepSpec(SweepSection):
    name: str | None = Field(None, description="sweep name; default: the file's stem")
    job: str = Field(description="base job YAML (relative to the current directory), e.g. jobs/imp_adain.yaml")
    overrides: dict[str, Any] = Field(default_factory=dict, description="fixed dotted keys for every trial")
    space: dict[str, dict[str, Any]] = Field(default_factory=dict, description="dotted key -> {domain: values}")
    objective: Objective = Field(default_factory=Objective)
    search: Search = Field(default_factory=Search)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    resources: Resources = Field(default_factory=Resources)
    concurrency: int = Field(2, ge=1, description="trials running at the same time (at most)")
    max_failures: int = Field(1, ge=0, description="retries of a crashed trial from its last checkpoint")
    fault_injection: FaultInjection | None = None

    @model_validator(mode="after")
    def _check_search(self) -> SweepSpec:
        uses_grid = any("grid" in domain for domain in self.space.values())
        if self.search.algorithm == "optuna" and uses_grid:
            raise ValueError("search.algorithm=optuna cannot search a {grid: ...} domain; use {choice: ...}")
        return self

    # --- derived ----------------------------------------------------------------------------
    @property
    def sweep_name(self) -> str:
        return self.name or "sweep"

    def base_config(self) -> Config:
        """The base job with the fixed overrides (relative paths resolved against the current directory)."""
        return load_config(self.job, self.overrides)

    def trial_config(self, params: Mapping[str, Any]) -> Config:
        return with_overrides(self.base_config(), dict(params))

    def kind(self) -> TrialKind:
        return kind_of(self.base_config())

    def max_iterations(self) -> int:
        """Tune iterations of the longest trial (ASHA's max_t): ``scheduler.max_t``, else the most any
        combination of the space's listed values (ranges: their ends) makes the base job report."""
        if self.scheduler.max_t is not None:
            return self.scheduler.max_t
        base = self.base_config()
        kind = kind_of(base)
        choices = [[(key, value) for value in _domain_values(domain)] for key, domain in self.space.items()]
        if math.prod(len(c) for c in choices) <= MAX_COMBINATIONS:
            combinations = [dict(combo) for combo in itertools.product(*choices)]
        else:
            combinations = [{key: value} for choice in choices for key, value in choice]
        counts = []
        for overrides in combinations:  # the base job's own value of a searched key is no trial's
            try:
                counts.append(kind.iterations(with_overrides(base, overrides)))
            except ConfigError:
                continue  # each value is valid alone (checked at load); a clashing combination is no trial
        return max(counts, default=kind.iterations(base))


def _domain_values(domain: Mapping[str, Any]) -> list[Any]:
    """Representative values of a domain: every listed one, or a range's ends."""
    (kind, values), = domain.items()
    if kind == "value":
        return [values]
    return list(values)


# --- loading --------------------------------------------------------------------------------

def _unknown_key(path: tuple[str, ...], section: type[BaseModel]) -> str:
    """The config module's message style: key, a close match, and the valid keys of its section."""
    valid = list(section.model_fields)
    near = difflib.get_close_matches(path[-1], valid, n=1)
    hint = f" (did you mean '{'.'.join((*path[:-1], near[0]))}'?)" if near else ""
    where = ".".join(path[:-1]) or "the top level"
    return f"{'.'.join(path)}: unknown key{hint}; valid keys in {where}: {', '.join(valid)}"


def _section_of(path: tuple[str, ...]) -> type[BaseModel]:
    section: type[BaseModel] = SweepSpec
    for part in path[:-1]:
        annotation = section.model_fields[part].annotation
        args = getattr(annotation, "__args__", ())  # FaultInjection | None
        section = next((a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)), section)
    return section


def _format(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        path = tuple(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(_unknown_key(path, _section_of(path)))
        else:
            got = item.get("input")
            shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
            lines.append(f"{'.'.join(path) or 'sweep'}: {item['msg']}{shown}")
    return "\n  ".join(lines)


def _check_domain(key: str, domain: Any) -> None:
    if not isinstance(domain, Mapping) or len(domain) != 1:
        raise ConfigError(f"space.{key}: give exactly one domain, e.g. {{grid: [0.1, 0.2]}}; domains: {', '.join(DOMAINS)}")
    (kind, values), = domain.items()
    if kind not in DOMAINS:
        near = difflib.get_close_matches(str(kind), DOMAINS, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"space.{key}.{kind}: unknown domain{hint}; domains: {', '.join(DOMAINS)}")
    if kind in RANGE_DOMAINS and not (isinstance(values, list) and len(values) == 2):
        raise ConfigError(f"space.{key}.{kind}: give [low, high] (got {values!r})")
    if kind in ("grid", "choice") and not (isinstance(values, list) and values):
        raise ConfigError(f"space.{key}.{kind}: give a non-empty list (got {values!r})")


def _check_against_job(spec: SweepSpec) -> None:
    """Every dotted key and every listed value must make a valid job of the base job's kind (ranges: both ends),
    and the objective must be a metric that kind reports."""
    base = spec.base_config()
    try:
        kind = kind_of(base)
    except ConfigError as err:
        raise ConfigError(f"job {spec.job}: {err}") from None
    for key, domain in spec.space.items():
        _check_domain(key, domain)
        for value in _domain_values(domain):
            try:
                trial = with_overrides(base, {key: value})
            except ConfigError as err:
                message = str(err).removeprefix("invalid config:").strip()
                raise ConfigError(message if message.startswith(key) else f"space.{key}={value!r}: {message}") from None
            if not kind.accepts(trial):
                raise ConfigError(f"space.{key}={value!r}: makes a prune.method={trial.prune.method} job, not a "
                                  f"{kind.label} one as {spec.job}; every trial of a sweep is of one kind")
    _check_objective(spec.objective, kind)


def _check_objective(objective: Objective, kind: TrialKind) -> None:
    if objective.metric not in kind.metrics:
        near = difflib.get_close_matches(objective.metric, kind.metrics, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"objective.metric: unknown metric '{objective.metric}'{hint}; "
                          f"{kind.label} trials report: {', '.join(kind.metrics)}")
    if objective.macs_budget is None and objective.metric == "budgeted_error":
        raise ConfigError("objective.macs_budget: required when objective.metric is budgeted_error (MACs of one "
                          "stylisation at the job's data.eval_size or crop, e.g. 1500000000)")
    if objective.macs_budget is not None and "budgeted_error" not in kind.metrics:
        raise ConfigError(f"objective.macs_budget: {kind.label} trials report no budgeted_error; remove the budget")


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file; errors are ConfigError with one line per problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist (see tune/ for the shipped ones)")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping ({', '.join(SweepSpec.model_fields)})")
    tree.setdefault("name", path.stem)
    try:
        spec = SweepSpec.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"invalid sweep {path}:\n  {_format(err)}") from None
    try:
        _check_against_job(spec)
    except ConfigError as err:
        raise ConfigError(f"invalid sweep {path}:\n  {err}") from None
    return spec
