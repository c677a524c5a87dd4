"""The package's import graph (read from the source, nothing imported): every import points down the layers
of docs/architecture.md, and no function-level import dodges a cycle between packages.

Function-level imports stay allowed where they keep start-up light (the CLI imports torch, DeepSpeed and Ray
only in the command that needs them), but never to reach a module that imports back.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "distst"

#: Lowest first; a module may import its own layer and those below it, never one above.
LAYERS: list[set[str]] = [
    {"errors", "atomic", "stop", "distributed", "registry", "records", "weights", "diskfull", "outputs"},
    {"images", "config", "track"},
    {"data"},
    {"models", "metrics", "video"},
    {"evaluate", "masters", "stylize", "rundir", "export", "reports"},
    {"train"},
    {"prune", "quant", "preflight", "distill", "stability"},
    {"sweep", "bench", "presets", "smoke", "launcher", "study"},
    {"commands", "cli", "__main__", "distst"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _target(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")[: len(module.split(".")) - (0 if is_package else 1)]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(module: str) -> tuple[set[str], set[str]]:
    """distst modules imported at module level, and inside functions (TYPE_CHECKING blocks skipped)."""
    path = MODULES[module]
    top: set[str] = set()
    late: set[str] = set()

    def visit(node: ast.AST, at_top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = _target(module, child, path.name == "__init__.py")
                names = [base, *(f"{base}.{alias.name}" for alias in child.names)]
            found = {n for n in names if n in MODULES}
            (top if at_top else late).update(found)
            visit(child, at_top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(ast.parse(path.read_text()), True)
    return top - {"distst"}, late - {"distst"}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "distst"


def test_every_package_has_a_layer() -> None:
    assert {_package(m) for m in MODULES} <= set(RANK), "add the new package to LAYERS (and docs/architecture.md)"


def test_module_level_imports_point_down_the_layers() -> None:
    upward = sorted(f"{m} -> {t}" for m in MODULES for t in _imports(m)[0]
                    if RANK[_package(t)] > RANK[_package(m)])
    assert not upward, upward


def test_no_function_level_import_dodges_a_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for m in MODULES:
        graph[m] = _imports(m)[0]

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                parts = node.split(".")
                stack += [*graph[node], *(p for p in (".".join(parts[:i]) for i in range(2, len(parts))) if p in MODULES)]
        return False

    dodges = sorted(f"{m} -> {t}" for m in MODULES for t in _imports(m)[1]
                    if _package(m) != _package(t) and reaches(t, m))
    assert not dodges, dodges


def test_only_the_command_line_imports_the_commands() -> None:
    users = sorted(m for m in MODULES for t in set().union(*_imports(m))
                   if _package(t) in ("commands", "cli") and _package(m) not in ("commands", "cli", "__main__")
                   and m != "distst.smoke")
    assert not users, users
