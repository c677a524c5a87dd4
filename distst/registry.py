"""One record per model and per compression method, written where each is defined.

A model class is decorated with ``@registry.model(Section, ...)`` and a method's config section with
``@registry.method(...)`` (as timm's ``@register_model``): the decorator writes the one record that says what the
thing is called, which config section validates ``model.*`` / ``prune.*``, which command runs it and what it
can do. Generic code asks a record for a capability (``needs_full_parameters``, ``trains_encoder``, a model's
verdict metric...) and never tests a name.

The config floor stays free of model and method knowledge: it asks these tables, which are filled when the
built-in packages are imported (``load_builtins``), and then every module named in ``DISTST_PLUGINS``
(comma-separated), so that a plugin's models and methods are known in subprocesses and Ray workers too.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

T = TypeVar("T", bound=type)

#: What runs a method: one training run (``distst train``), IMP's levels (``distst imp``), or channel
#: pruning's stages (``distst prune``).
Command = Literal["train", "imp", "prune"]
COMMANDS: tuple[str, ...] = ("train", "imp", "prune")
#: Environment variable: modules to import after the built-ins (``DISTST_PLUGINS=my_pkg.models,my_pkg.slim``).
PLUGINS_ENV = "DISTST_PLUGINS"
# Packages whose import registers the built-in models and methods.
BUILTINS = ("distst.models", "distst.prune", "distst.quant")
#: What ``model.name`` and ``prune.method`` are when a job leaves them out (set by the built-in packages).
DEFAULTS: dict[str, str] = {"prune.method": "none"}


INFERENCE_INPUTS = ("content_style", "content", "noise")


@dataclass(frozen=True)
class ModelRecord:
    """A model: its name (``model.name``), config section, class, and what generic code may ask of it."""

    name: str
    section: type  # a distst.config.ModelSection subclass
    model_class: type  # a distst.models.DiststModel subclass
    #: The metric that decides whether a compressed model matches the dense one: a key of the evaluation
    #: errors (E, ``total_error``) or of ``set_metrics`` (a GAN's FID).
    verdict_metric: str = "total_error"
    #: The keys ``DiststModel.set_metrics`` returns (metrics of whole held-out sets), e.g. ("fid", "kid", ...).
    set_metrics: tuple[str, ...] = ()
    #: ``model.*`` keys naming local weight files: the preflight checks they exist; model files never store them.
    weight_keys: tuple[str, ...] = ()
    #: What the model turns into an image at inference: "content_style" (style transfer: a content and a style
    #: image), "content" (image-to-image translation: a content image only), "noise" (unconditional generation).
    inputs: str = "content_style"

    @property
    def decides_by_set_metric(self) -> bool:
        """Whether its verdict needs a held-out set (and e.g. Inception weights), not only the evaluation pairs."""
        return self.verdict_metric in self.set_metrics


@dataclass(frozen=True)
class MethodRecord:
    """A compression method: its name (``prune.method``), config section, command and capabilities."""

    name: str
    section: type  # a distst.config.MethodSection subclass
    command: str
    #: ``factory(cfg) -> distst.train.Method | None`` for a method that is one training run (command "train").
    factory: Callable[[Any], Any] | None = None
    #: It edits weights in place (masks, fake quantisation): ZeRO-3's partitioned parameters cannot hold that.
    needs_full_parameters: bool = False
    #: It compresses the whole network, so a style-transfer model trains its encoder (``model.encoder=auto``).
    trains_encoder: bool = False
    #: It compares compressed models by the model's verdict metric (IMP's matching levels): a model whose
    #: verdict is a set metric (a GAN's FID) then needs that set and its extractor's weights.
    decides_by_verdict: bool = False

    def zero3_problem(self, zero_stage: int) -> str | None:
        """The one ZeRO-3 rule (preflight and trainer): why this method cannot run at ``zero_stage``, or None."""
        if zero_stage == 3 and self.needs_full_parameters:
            return (f"deepspeed.zero_stage=3 cannot be combined with prune.method={self.name}: ZeRO-3 partitions "
                    "every parameter across ranks, so the method cannot edit weights in place; use 0, 1 or 2")
        return None


MODELS: dict[str, ModelRecord] = {}
METHODS: dict[str, MethodRecord] = {}


def _add(table: dict[str, Any], kind: str, record: Any) -> None:
    old = table.get(record.name)
    # The same definition imported again (a module reloaded) replaces its record; another one is a clash.
    if old is not None and _origin(old.section) != _origin(record.section):
        raise ValueError(f"{kind} {record.name!r} is registered already (by {_origin(old.section)})")
    table[record.name] = record


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _literal_default(section: type, field: str) -> str:
    """The name a section declares as its chooser's default (``name: Literal["adain"] = "adain"``)."""
    default = section.model_fields[field].default  # type: ignore[attr-defined]
    if not isinstance(default, str):
        raise TypeError(f"{section.__name__}.{field} needs a string default (its registered name)")
    return default


def model(section: type, *, verdict_metric: str = "total_error", set_metrics: tuple[str, ...] = (),
          weight_keys: tuple[str, ...] = (), inputs: str = "content_style") -> Callable[[T], T]:
    """Class decorator: register a ``DiststModel`` subclass under its section's ``name`` default.

    Sets the class's ``name``, ``section``, ``verdict_metric`` and ``set_metric_names`` and the section's
    ``model_class`` from the record, so that the record is the one place they are written.
    """
    name = _literal_default(section, "name")
    if verdict_metric != "total_error" and verdict_metric not in set_metrics:
        raise ValueError(f"model {name!r}: verdict_metric {verdict_metric!r} is neither E nor one of its set metrics")
    if inputs not in INFERENCE_INPUTS:
        raise ValueError(f"model {name!r}: inputs {inputs!r} is not one of {', '.join(INFERENCE_INPUTS)}")

    def register(cls: T) -> T:
        cls.name, cls.section, cls.verdict_metric = name, section, verdict_metric  # type: ignore[attr-defined]
        cls.set_metric_names = tuple(set_metrics)  # type: ignore[attr-defined]
        section.model_class = cls  # type: ignore[attr-defined]
        _add(MODELS, "model", ModelRecord(name, section, cls, verdict_metric, tuple(set_metrics), tuple(weight_keys),
                                          inputs))
        return cls

    return register


def method(*, command: str = "train", factory: Callable[[Any], Any] | None = None,
           needs_full_parameters: bool = False, trains_encoder: bool = False,
           decides_by_verdict: bool = False) -> Callable[[T], T]:
    """Class decorator: register a ``MethodSection`` subclass under its ``method`` default.

    A method run by ``distst train`` gives its ``factory``; one with stages of its own names its command instead.
    """
    if command not in COMMANDS:
        raise ValueError(f"command {command!r}: one of {', '.join(COMMANDS)}")
    if (command == "train") != (factory is not None):
        raise ValueError("a method run by `distst train` needs a factory, and only such a method has one")

    def register(section: T) -> T:
        _add(METHODS, "method", MethodRecord(_literal_default(section, "method"), section, command, factory,
                                             needs_full_parameters, trains_encoder, decides_by_verdict))
        return section

    return register


def _lookup(table: dict[str, Any], kind: str, name: str) -> Any:
    load_builtins()
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; registered: {', '.join(sorted(table))}")
    return table[name]


def model_record(name: str) -> ModelRecord:
    """The record of ``model.name=<name>`` (a ValueError naming the registered ones if none)."""
    return _lookup(MODELS, "model", name)


def method_record(name: str) -> MethodRecord:
    """The record of ``prune.method=<name>`` (a ValueError naming the registered ones if none)."""
    return _lookup(METHODS, "method", name)


def methods_run_by(command: str) -> list[str]:
    """The methods a command runs, sorted (messages, sweep kinds)."""
    load_builtins()
    return sorted(name for name, record in METHODS.items() if record.command == command)


_walked: set[str] = set()


def load_builtins() -> None:
    """Import every module of the built-in packages (a new model or method file registers itself, with no import
    line to add anywhere), then the modules ``DISTST_PLUGINS`` names (each once: imports are cached)."""
    for name in BUILTINS:
        if name not in _walked:
            package = importlib.import_module(name)
            for module in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
                importlib.import_module(module.name)
            _walked.add(name)
    for plugin in filter(None, (p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(","))):
        importlib.import_module(plugin)
