"""What an installed wheel needs: every module the package imports is a declared dependency, and
the demo's deployment is the bundled one."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import yaml

from mcp_guard.cli import demo
from tests.helpers import REPO_ROOT

# Import names that differ from their distribution names.
DISTRIBUTION = {
    "yaml": "pyyaml",
    "jwt": "pyjwt",
    "mcp_types": "mcp",
    "sqlite_utils": "sqlite-utils",
    "opentelemetry": "opentelemetry-api",
}
EXTRAS = ("otel", "browse", "postgres")
"""Extras whose modules the package imports where they are used (the guard runs without them)."""


def _imported_top_level(package: Path) -> set[str]:
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_third_party_module_the_package_imports_is_a_declared_dependency() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = [dep for extra in EXTRAS for dep in project["optional-dependencies"][extra]]
    declared = {
        dep.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower()
        for dep in [*project["dependencies"], *extras]
    }
    third_party = _imported_top_level(REPO_ROOT / "mcp_guard") - set(sys.stdlib_module_names) - {"mcp_guard"}
    missing = {name for name in third_party if DISTRIBUTION.get(name, name).replace("_", "-") not in declared}
    assert missing == set()


def test_the_demo_uses_the_bundled_manifests_and_agents(tmp_path: Path) -> None:
    config = yaml.safe_load(demo._deployment(tmp_path).read_text())
    bundled = yaml.safe_load((REPO_ROOT / "guard.yaml").read_text())
    assert config["agents"] == bundled["agents"]
    assert config["forbid"] == bundled["forbid"]
    assert Path(config["manifests"]).resolve() == (REPO_ROOT / "tool_manifests").resolve()
    assert sorted(p.name for p in Path(config["manifests"]).iterdir() if p.suffix == ".yaml") == [
        "billing.yaml",
        "tickets.yaml",
    ]
