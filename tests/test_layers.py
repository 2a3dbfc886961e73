"""The package reads one way: every module imports only modules below it, at the top or inside a function, so
that no two modules import each other, directly or through others."""

from __future__ import annotations

import ast
from pathlib import Path

import digit_recognizer

PACKAGE = Path(digit_recognizer.__file__).parent


def imports_of(path: Path) -> set[str]:
    """The package's modules that ``path`` imports anywhere (``from . import x``, ``from .x import y``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("digit_recognizer."):
            found.add(node.module.split(".")[1])
    return found


def test_no_module_imports_a_module_that_imports_it_back():
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    graph = {name: imports_of(PACKAGE / f"{name}.py") & modules for name in modules}
    order: list[str] = []  # a topological order exists exactly when there is no cycle
    visiting: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        assert name not in visiting, f"import cycle: {' -> '.join((*path, name))}"
        visiting.add(name)
        for below in sorted(graph[name]):
            visit(below, (*path, name))
        visiting.discard(name)
        order.append(name)

    for name in sorted(modules):
        visit(name, ())
    assert order.index("errors") < order.index("files") < order.index("rundir") < order.index("runs")
    assert order.index("cli") == len(order) - 1 or not any("cli" in graph[m] for m in modules)
