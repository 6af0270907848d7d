"""The shape of `scripts/` (issue 29): small, thin over the public API, and an index that names every result.

- at most `MAX_LINES` lines of Python in `scripts/*.py` (as `wc -l` counts them), no function longer than
  `MAX_FUNCTION_LINES`;
- no `sys.path` edits (pytest puts `scripts/` on the path: `pythonpath` in pyproject.toml);
- no assignment to attributes of `upetu_hf` objects (modules, classes, instances): a script that needs another
  behaviour asks for a public option;
- `results/README.md` names every file under `results/`, and `make_report.py` run on the committed results
  reproduces it and the generated regions of README.md and docs/benchmarks.md byte for byte.
"""

from __future__ import annotations

import ast
import importlib
import shutil
from collections.abc import Callable

from conftest import REPO_ROOT

SCRIPTS = REPO_ROOT / "scripts"
RESULTS = REPO_ROOT / "results"
MAX_LINES = 3000
MAX_FUNCTION_LINES = 80


def script_trees() -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text(), str(p)) for p in sorted(SCRIPTS.glob("*.py"))}


def root_name(node: ast.AST) -> str | None:
    """`a` for `a.b.c`, `a[0].b` or `a`; None for anything else (a call, a literal)."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def imported_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """The names imports bind in `tree`: from `upetu_hf` (`import upetu_hf.x` binds `upetu_hf`, always counted), and
    from other packages (not the sibling scripts, which may pass `upetu_hf` objects on)."""
    upetu, other = {"upetu_hf"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            pairs = [(node.module or "", alias.asname or alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            pairs = [(alias.name, alias.asname or alias.name.split(".")[0]) for alias in node.names]
        else:
            continue
        for module, name in pairs:
            top = module.split(".")[0]
            if top == "upetu_hf":
                upetu.add(name)
            elif top and not (SCRIPTS / f"{top}.py").exists():
                other.add(name)
    return upetu, other


def refers_to(node: ast.AST, names: set[str]) -> bool:
    """Whether `node` is one of `names`, a part of one, or a container or `.items()` view holding one (a call's
    result is not, except `getattr`'s)."""
    if isinstance(node, ast.Call):
        view = isinstance(node.func, ast.Attribute) and node.func.attr in ("items", "keys", "values")
        getter = isinstance(node.func, ast.Name) and node.func.id == "getattr" and node.args
        return bool(view and refers_to(node.func.value, names) or getter and refers_to(node.args[0], names))
    if isinstance(node, ast.Name):
        return node.id in names
    return any(refers_to(child, names) for child in ast.iter_child_nodes(node))


def bound_names(tree: ast.Module, refers: Callable[[ast.AST], bool]) -> set[str]:
    """The names an assignment, `for`, comprehension or `with ... as` binds to a value for which `refers` holds."""
    pairs = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            pairs += [(target, node.value) for target in node.targets]
        elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value:
            pairs.append((node.target, node.value))
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            pairs.append((node.target, node.iter))
        elif isinstance(node, ast.withitem) and node.optional_vars:
            pairs.append((node.optional_vars, node.context_expr))
    return {
        n.id for target, value in pairs if refers(value) for n in ast.walk(target) if isinstance(n, ast.Name)
    }


def is_patch(call: ast.Call) -> bool:
    """`setattr(...)`, `delattr(...)`, `monkeypatch.setattr(...)`, `mock.patch(...)`, `mock.patch.object(...)`, ..."""
    parts, node = [], call.func
    while isinstance(node, ast.Attribute):
        parts, node = [node.attr, *parts], node.value
    parts = [node.id, *parts] if isinstance(node, ast.Name) else parts
    return bool(parts) and (parts[-1] in ("setattr", "delattr") or "patch" in parts)


def upetu_attribute_writes(tree: ast.Module) -> list[int]:
    """Lines that change an attribute of a `upetu_hf` object: `x.a = ...`, `x.a += ...` or `del x.a` where `x` is
    (an alias of) an import from `upetu_hf`; and every `setattr`, `delattr` and `mock.patch`/`monkeypatch` call,
    unless its target is a string naming another package, an import from another package, or an argparse
    namespace (a name bound to a `parse_args` result): an object passed through a dict or a parameter counts."""
    upetu, other = imported_names(tree)
    while len(upetu) < len(upetu := upetu | bound_names(tree, lambda value: refers_to(value, upetu))):
        pass
    parsed = bound_names(
        tree,
        lambda v: (
            isinstance(v, ast.Call)
            and isinstance(v.func, ast.Attribute)
            and v.func.attr in ("parse_args", "parse_known_args")
        ),
    )
    safe = (other | parsed) - upetu
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            if root_name(node.value) in upetu:
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and node.args and is_patch(node):
            target = node.args[0]
            if isinstance(target, ast.Constant) and isinstance(target.value, str):
                if target.value.split(".")[0] == "upetu_hf":
                    lines.append(node.lineno)
            elif root_name(target) not in safe:
                lines.append(node.lineno)
    return sorted(lines)


def sys_path_edits(tree: ast.Module) -> list[int]:
    """Lines that change `sys.path`: a call of one of its methods, or an assignment to it."""

    def is_sys_path(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "path" and root_name(node) == "sys"

    lines = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and is_sys_path(node.func.value)
        ):
            lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(
                is_sys_path(t) or (isinstance(t, ast.Subscript) and is_sys_path(t.value)) for t in targets
            ):
                lines.append(node.lineno)
    return lines


def test_scripts_fit_in_the_line_budget():
    lines = {p.name: len(p.read_bytes().splitlines()) for p in SCRIPTS.glob("*.py")}
    assert sum(lines.values()) <= MAX_LINES, sorted(lines.items(), key=lambda item: -item[1])


def test_no_function_is_longer_than_the_limit():
    long = [
        f"{name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for name, tree in script_trees().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long


def test_no_script_edits_sys_path():
    edits = {name: lines for name, tree in script_trees().items() if (lines := sys_path_edits(tree))}
    assert not edits


def test_no_script_assigns_to_upetu_hf_attributes():
    found = [
        f"{name}:{line}" for name, tree in script_trees().items() for line in upetu_attribute_writes(tree)
    ]
    assert not found


def test_the_checks_catch_what_they_look_for():
    """Each check finds its fault in a small example (so a passing check means something)."""
    tree = ast.parse(
        "import sys\nimport upetu_hf.train\nfrom upetu_hf.tuner import layer as L\n"
        "sys.path.insert(0, 'x')\nsys.path = []\nupetu_hf.train.loop.STEP = 1\nL.Q.bits += 1\n"
        "setattr(L, 'f', None)\nother.x = 1\n"
    )
    assert sorted(sys_path_edits(tree)) == [4, 5]
    assert upetu_attribute_writes(tree) == [6, 7, 8]


def test_the_attribute_check_catches_indirect_assignments_and_patches():
    """An attribute changed through an alias, a dict of targets, `del`, `mock.patch` or `monkeypatch` is found;
    `setattr` on an argparse namespace and patches of other packages are not."""
    lines = [
        "import argparse, torch",
        "from unittest import mock",
        "import upetu_hf.train.loop as loop",
        "from upetu_hf.train.output_dir import OutputLock",
        "patches = {(loop, 'STEP'): 1}",
        "for (owner, name), value in patches.items():",
        "    setattr(owner, name, value)",  # 7
        "alias = OutputLock",
        "alias.timeout = 0",  # 9
        "del loop.STEP",  # 10
        "mock.patch.object(OutputLock, '_create')",  # 11
        "mock.patch('upetu_hf.train.checkpoint.save_tensors')",  # 12
        "monkeypatch.setattr('upetu_hf.train.loop.STEP', 2)",  # 13
        "def patch_all(target):",
        "    setattr(target, 'x', 1)",  # 15: a parameter may be a upetu_hf object
        "monkeypatch.setattr(torch, 'x', 1)",
        "mock.patch('os.replace')",
        "args = argparse.ArgumentParser().parse_args([])",
        "setattr(args, 'lr', 1.0)",
        "args.lr = 2.0",
    ]
    assert upetu_attribute_writes(ast.parse("\n".join(lines))) == [7, 9, 10, 11, 12, 13, 15]


def test_results_readme_names_every_file_under_results():
    index = (RESULTS / "README.md").read_text()
    files = sorted(p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*") if p.is_file())
    assert [f for f in files if f"`{f}`" not in index] == []
    assert "undescribed" not in index


def test_make_report_reproduces_the_committed_report(tmp_path):
    """On a copy of the repository's results/, README.md and docs/benchmarks.md, `make_report.py` writes exactly
    the committed results/README.md, accuracy_summary.md and marker regions."""
    shutil.copytree(RESULTS, tmp_path / "results")
    (tmp_path / "docs").mkdir()
    for name in ("README.md", "docs/benchmarks.md"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    argv = ["--results-dir", str(tmp_path / "results"), "--readme", str(tmp_path / "README.md")]
    argv += ["--docs", str(tmp_path / "docs/benchmarks.md"), "--index", str(tmp_path / "results/README.md")]
    importlib.import_module("make_report").main(argv)
    for name in ("results/README.md", "results/accuracy_summary.md", "README.md", "docs/benchmarks.md"):
        assert (tmp_path / name).read_text() == (REPO_ROOT / name).read_text(), name


def test_the_readme_headline_is_short():
    """README.md's generated region (the headline table with its verdicts) stays within 25 lines."""
    readme = (REPO_ROOT / "README.md").read_text()
    make_report = importlib.import_module("make_report")
    region = readme[readme.index(make_report.START) : readme.index(make_report.END)]
    assert len(region.splitlines()) - 1 <= 25
