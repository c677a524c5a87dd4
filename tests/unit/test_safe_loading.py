"""Nothing distst reads from disk can run code: every ``torch.load`` passes ``weights_only=True`` and no module
unpickles (pickle, cloudpickle, dill, ``np.load(allow_pickle=True)``, ``yaml.load`` without a safe loader).
Ray Tune's own pickles are read only after distst.sweep.integrity put back its sealed copy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "distst"
UNSAFE_MODULES = {"pickle", "cloudpickle", "dill", "marshal", "shelve"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else keyword.value
    return None


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_loads_anything_that_can_run_code(source: Path) -> None:
    tree = ast.parse(source.read_text(), filename=str(source))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"line {node.lineno}: imports {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
    for call in _calls(tree):
        name = _name(call.func)
        if name.endswith("torch.load"):
            if _keyword(call, "weights_only") is not True:
                found.append(f"line {call.lineno}: torch.load without weights_only=True")
        elif name in ("np.load", "numpy.load") and _keyword(call, "allow_pickle") not in (None, False):
            found.append(f"line {call.lineno}: np.load with allow_pickle")
        elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            found.append(f"line {call.lineno}: {name} (use yaml.safe_load)")
    assert not found, f"{source.relative_to(PACKAGE)}: {'; '.join(found)}"


def test_the_scan_sees_torch_loads() -> None:
    """The scan would notice: distst does call torch.load (with weights_only=True) in many modules."""
    loads = sum(_name(c.func).endswith("torch.load") for s in SOURCES for c in _calls(ast.parse(s.read_text())))
    assert loads >= 10
