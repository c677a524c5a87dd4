"""Sweep files (``tune/*.yaml``): a base job, fixed dotted overrides, a search space and how to search it.

A sweep names the same dotted keys as a job's command line (``prune.rate``, ``train.seed``); every key and
every value in the space is checked against the job's config tree before Ray starts, so a typo fails at
once with the config's own "unknown key (did you mean ...)" message. Keys of the sweep file itself get the
same treatment.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..config import Config, ConfigError, load_config, with_overrides

# One key per domain, e.g. {grid: [0.2, 0.3]} or {loguniform: [1e-4, 1e-2]}.
DOMAINS = ("grid", "choice", "uniform", "loguniform", "randint", "value")
RANGE_DOMAINS = ("uniform", "loguniform", "randint")
#: Metrics an IMP trial reports after every level (``training_iteration`` = level + 1).
IMP_METRICS = ("total_error", "content_error", "style_error", "sparsity", "extreme_sparsity", "matching", "level",
               "dense_total_error", "training_iteration")


class SweepSection(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Objective(SweepSection):
    metric: str = Field("extreme_sparsity", description="a metric every trial reports (see IMP_METRICS)")
    mode: Literal["min", "max"] = "max"


class Search(SweepSection):
    algorithm: Literal["grid", "random", "optuna"] = Field(
        "grid", description="grid/random: Tune's variant generator (grid keys are crossed, the rest sampled); "
                            "optuna: TPE through ray.tune.search.optuna")
    samples: int = Field(1, ge=1, description="grid: repeats of the whole grid; otherwise: number of trials")
    seed: int | None = Field(0, description="seed of the sampler (optuna, random)")


class Scheduler(SweepSection):
    name: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(1, ge=1, description="levels every trial runs before ASHA may stop it")
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="levels of the longest trial; default: prune.rounds + 1")


class Resources(SweepSection):
    cpus: float = Field(1.0, gt=0, description="CPUs per trial (all its processes together)")
    gpus: float = Field(0.0, ge=0, description="GPUs per trial (all its processes together)")
    processes: int = Field(1, ge=1, description=">1: a Ray Train TorchTrainer with this many workers (gloo/NCCL)")


class FaultInjection(SweepSection):
    """Test-only: make chosen trials fail once, right after reporting a level, to exercise retries."""

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

    def max_levels(self) -> int:
        if self.scheduler.max_t is not None:
            return self.scheduler.max_t
        rounds = [self.base_config().prune.rounds]
        if "prune.rounds" in self.space:
            rounds += [v for v in _domain_values(self.space["prune.rounds"]) if isinstance(v, int)]
        return max(rounds) + 1


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
    """Every dotted key and every listed value must make a valid job (ranges: both ends)."""
    base = spec.base_config()
    for key, domain in spec.space.items():
        _check_domain(key, domain)
        for value in _domain_values(domain):
            try:
                with_overrides(base, {key: value})
            except ConfigError as err:
                message = str(err).removeprefix("invalid config:").strip()
                raise ConfigError(message if message.startswith(key) else f"space.{key}={value!r}: {message}") from None
    if spec.objective.metric not in IMP_METRICS:
        near = difflib.get_close_matches(spec.objective.metric, IMP_METRICS, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"objective.metric: unknown metric '{spec.objective.metric}'{hint}; "
                          f"IMP trials report: {', '.join(IMP_METRICS)}")
    if base.prune.method != "imp":
        raise ConfigError(f"job {spec.job}: sweeps run IMP trials; set prune.method: imp (got {base.prune.method})")


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
