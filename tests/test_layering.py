"""The package's imports, read with `ast`: no import circle between modules, and no upward import (the building
blocks `tuner/`, `data/`, `models/`, `metrics/` never import `train/` or `hub`)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "upetu_hf"
BLOCKS = ("upetu_hf.tuner", "upetu_hf.data", "upetu_hf.models", "upetu_hf.metrics")
ABOVE = ("upetu_hf.train", "upetu_hf.hub")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.Module):
    """Import nodes that run (those under `if TYPE_CHECKING:` do not)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skipped]


def import_graph(root: Path) -> dict[str, set[str]]:
    """`{module: modules of the package it imports}`, functions' lazy imports included; `from pkg import name`
    counts as importing `pkg.name` when that is a module."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    top = root.name
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [
                    f"{module}.{a.name}" if f"{module}.{a.name}" in files else module for a in node.names
                ]
            edges |= {t for t in targets if t.split(".")[0] == top and t in files and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle (a strongly connected set of modules, or a module importing itself), as a list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle():
    assert cycles(import_graph(PACKAGE)) == []


def test_building_blocks_never_import_train_or_hub():
    upward = {
        (module, target)
        for module, targets in import_graph(PACKAGE).items()
        if module.startswith(BLOCKS)
        for target in targets
        if target.startswith(ABOVE)
    }
    assert upward == set()


def test_the_checks_see_circles_lazy_imports_and_upward_imports(tmp_path):
    """A circle made of a lazy import, and an upward import, are both found (the checks can fail)."""
    root = tmp_path / "upetu_hf"
    for folder in (root / "train", root / "tuner"):
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "train" / "config.py").write_text("def f():\n    from .methods import g\n")
    (root / "train" / "methods.py").write_text("from .config import f\nfrom typing import TYPE_CHECKING\n")
    (root / "tuner" / "layer.py").write_text("from ..train import methods\n")
    graph = import_graph(root)
    assert cycles(graph) == [["upetu_hf.train.config", "upetu_hf.train.methods"]]
    assert graph["upetu_hf.tuner.layer"] == {"upetu_hf.train.methods"}
