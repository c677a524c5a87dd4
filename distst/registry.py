"""Where models and compression methods make themselves known to the config tree.

A model registers its config section under its name (``model.name``), a method under its name
(``prune.method``). The config floor stays free of model and method knowledge: it asks this table, which is
filled when the built-in packages are imported (``load_builtins``), as a plugin's import would fill it.
"""

from __future__ import annotations

import importlib
from typing import Any

MODEL_SECTIONS: dict[str, Any] = {}
METHOD_SECTIONS: dict[str, Any] = {}
#: ``prune.method`` -> ``factory(cfg) -> distst.train.Method`` for methods that are one training run, so that
#: ``distst train`` runs them (methods with stages of their own have their own command: imp, prune).
METHOD_FACTORIES: dict[str, Any] = {}
#: What ``model.name`` and ``prune.method`` are when a job leaves them out (set by the built-in packages).
DEFAULTS: dict[str, str] = {"prune.method": "none"}
# Packages whose import registers the built-in models and methods.
BUILTINS = ("distst.models", "distst.prune", "distst.quant")


def _add(table: dict[str, Any], kind: str, name: str, section: Any) -> None:
    if table.get(name, section) is not section:
        raise ValueError(f"{kind} {name!r} is registered already")
    table[name] = section


def register_model_section(name: str, section: Any) -> None:
    """``section`` (a ``distst.config.ModelSection`` subclass) is what ``model.name=<name>`` validates against."""
    _add(MODEL_SECTIONS, "model", name, section)


def register_method_section(name: str, section: Any) -> None:
    """``section`` (a ``distst.config.MethodSection`` subclass) is what ``prune.method=<name>`` validates against."""
    _add(METHOD_SECTIONS, "method", name, section)


def register_method_factory(name: str, factory: Any) -> None:
    """``factory(cfg)`` builds the ``distst.train.Method`` of ``prune.method=<name>`` for ``distst train``."""
    _add(METHOD_FACTORIES, "method factory", name, factory)


def method_factory(name: str) -> Any:
    """The registered factory of ``prune.method=<name>``, or None."""
    load_builtins()
    return METHOD_FACTORIES.get(name)


def load_builtins() -> None:
    for package in BUILTINS:
        importlib.import_module(package)
