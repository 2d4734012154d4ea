"""The shape of the house, checked: no import circles, a pure policy core, a library that never
imports its CLI, and modules small enough to read whole. Reads the source; imports nothing of it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "mcp_guard"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """The mcp_guard modules a module imports, at any depth of its code except `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in MODULES}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def test_no_module_imports_itself_through_others() -> None:
    cycles: list[list[str]] = []

    def walk(name: str, trail: list[str], seen: set[str]) -> None:
        for nxt in sorted(GRAPH[name]):
            if nxt == trail[0]:
                cycles.append([*trail, nxt])
            elif nxt not in seen and nxt > trail[0]:  # each cycle once, from its smallest module
                seen.add(nxt)
                walk(nxt, [*trail, nxt], seen)

    for start in sorted(GRAPH):
        walk(start, [start], {start})
    assert cycles == []


def test_the_policy_core_imports_only_itself_its_frozen_models_and_the_standard_library() -> None:
    allowed = {"mcp_guard.config", "mcp_guard.manifest"}  # the frozen models it decides by
    stdlib = set(sys.stdlib_module_names) | {"jsonschema", "referencing"}  # the validator it wraps
    for name, path in MODULES.items():
        if not name.startswith("mcp_guard.policy"):
            continue
        ours = {m for m in GRAPH[name] if not m.startswith("mcp_guard.policy")}
        assert ours <= allowed, (name, ours - allowed)
        third = {
            n.names[0].name.split(".")[0] if isinstance(n, ast.Import) else (n.module or "").split(".")[0]
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Import | ast.ImportFrom) and getattr(n, "level", 0) == 0
        } - {"mcp_guard", "__future__"}
        assert third <= stdlib, (name, third - stdlib)


def test_the_library_never_imports_the_cli() -> None:
    offenders = {
        name: sorted(m for m in GRAPH[name] if m.startswith("mcp_guard.cli"))
        for name in GRAPH
        if not name.startswith("mcp_guard.cli") and name != "mcp_guard.__main__"
    }
    assert {name: found for name, found in offenders.items() if found} == {}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_stays_small_enough_to_read_whole(name: str) -> None:
    assert len(MODULES[name].read_text().splitlines()) <= MAX_LINES


def test_a_stores_package_is_imported_only_by_the_ledger() -> None:
    stores = ("mcp_guard.ledger.sqlite", "mcp_guard.ledger.postgres")
    offenders = {
        name: sorted(m for m in GRAPH[name] if m.startswith(stores))
        for name in GRAPH
        if not name.startswith("mcp_guard.ledger")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_postgresql_driver_is_imported_only_inside_its_store() -> None:
    """psycopg is an optional extra: nothing else may need it to import."""
    for name, path in MODULES.items():
        if name.startswith("mcp_guard.ledger.postgres"):
            continue
        tree = ast.parse(path.read_text())
        found = {
            alias.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names
        } | {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "psycopg" not in found, name
