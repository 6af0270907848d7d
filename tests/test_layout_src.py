"""The shape of `src/`, read with `ast`: task behaviour lives on the `TaskSpec`s of `train/tasks.py` (at most
`MAX_TASK_COMPARISONS` task-name comparisons elsewhere) and no function is longer than `MAX_FUNCTION_LINES`."""

from __future__ import annotations

import ast

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "upetu_hf"
TASKS_MODULE = PACKAGE / "train" / "tasks.py"
#: the task names, in every spelling the package uses
TASK_NAMES = frozenset(
    {"classification", "segmentation", "change-detection", "change_detection", "semantic-segmentation"}
)
MAX_TASK_COMPARISONS = 3
MAX_FUNCTION_LINES = 80


def _is_task_name(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value in TASK_NAMES


def _names_a_task(node: ast.AST) -> bool:
    """A task-name constant, or a tuple/list/set literal holding one (`task in ("a", "b")`)."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_task_name(e) for e in node.elts)
    return _is_task_name(node)


def task_comparisons(tree: ast.AST) -> list[int]:
    """Line numbers of task-name comparisons in `tree`: a comparison (`==`, `!=`, `in`, ...) with a task name on
    either side, a dict literal keyed by task names (one per literal), and a `match` case on a task name."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(_names_a_task(n) for n in [node.left, *node.comparators]):
            lines.append(node.lineno)
        elif isinstance(node, ast.Dict) and any(_is_task_name(k) for k in node.keys):
            lines.append(node.lineno)
        elif isinstance(node, ast.match_case) and any(
            isinstance(p, ast.MatchValue) and _is_task_name(p.value) for p in ast.walk(node.pattern)
        ):
            lines.append(node.pattern.lineno)
    return lines


def long_functions(tree: ast.AST, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method longer than `limit` lines, counted from the `def` line to the
    last line of its body (`end_lineno - lineno + 1`; decorators not counted, docstrings and comments counted)."""
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > limit
    ]


def _sources() -> dict[str, ast.AST]:
    return {str(p.relative_to(PACKAGE)): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def test_task_comparisons_live_in_tasks_module():
    found = {
        name: lines
        for name, tree in _sources().items()
        if PACKAGE / name != TASKS_MODULE and (lines := task_comparisons(tree))
    }
    total = sum(len(lines) for lines in found.values())
    assert total <= MAX_TASK_COMPARISONS, f"{total} task-name comparisons outside train/tasks.py: {found}"


def test_no_long_functions():
    found = {name: long for name, tree in _sources().items() if (long := long_functions(tree))}
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines: {found}"


def test_the_checks_can_fail():
    source = (
        "def f(task):\n"
        "    if task == 'segmentation':\n"
        "        return {'classification': 1}\n"
        "    match task:\n"
        "        case 'change-detection':\n"
        "            return task in ('classification', 'x')\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    )
    tree = ast.parse(source)
    assert sorted(task_comparisons(tree)) == [2, 3, 5, 6]
    assert long_functions(tree) == [("f", 6 + MAX_FUNCTION_LINES)]
    assert task_comparisons(ast.parse("x = 'segmentation'\ny = task == 'other'")) == []
