"""Standing checks of the house plan that import-linter cannot express.

- no import cycles among the project's modules (run-time imports; typing-only
  imports under ``TYPE_CHECKING`` do not count);
- the process environment is read in one place, the settings source;
- no product module (app, pages, core, db) grows far past ~600 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "app", "db", "pages")
SETTINGS_SOURCE = ROOT / "core" / "adapters" / "settings_source.py"
MAX_LINES = 650


def product_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                  if "migrations" not in p.parts)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively (the graph has hundreds of nodes)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(sorted(component))
    return out


def test_the_cycle_finder_finds_a_cycle_and_only_that() -> None:
    found = strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert sorted(c for c in found if len(c) > 1) == [["a", "b", "c"]]


def test_no_import_cycles_among_project_modules() -> None:
    g = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    graph = {m: {i for i in g.find_modules_directly_imported_by(m)
                 if i.split(".")[0] in PACKAGES and i != m}
             for m in g.modules}
    # A package imports its own submodules in __init__ (re-exports): not a design cycle.
    cycles = []
    for component in strongly_connected(graph):
        if len(component) > 1:
            cycles.append(component)
    assert cycles == [], "import cycles: " + "; ".join(" ↔ ".join(c) for c in cycles)


def _reads_environment(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb") \
                and isinstance(node.value, ast.Name) and node.value.id == "os":
            lines.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module == "os" and any(
                a.name in ("environ", "getenv") for a in node.names):
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("path", product_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_settings_source_reads_the_environment(path: Path) -> None:
    if path == SETTINGS_SOURCE:
        return
    lines = _reads_environment(ast.parse(path.read_text(encoding="utf-8")))
    assert lines == [], (f"{path.relative_to(ROOT)} reads the environment at lines {lines}: "
                         "add a [runtime] setting instead (core/runtime_settings.py)")


def test_the_environment_check_would_catch_a_read() -> None:
    assert _reads_environment(ast.parse("import os\nx = os.environ.get('A')")) == [2]
    assert _reads_environment(ast.parse("from os import getenv")) == [1]


def test_no_product_module_is_far_above_600_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in product_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"split these along their seams: {long}"
