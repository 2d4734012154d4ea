"""A grant's `paths`: path arguments of a local upstream resolved on the host (symlinks followed,
`..` and `~` resolved, relative to the upstream's folder) and refused outside the listed folders.
Real files and symlinks in a temporary folder; the function the guard and `explain` share, then a
real session through the guard with the file server in memory, whose journal proves that a refused
path never reached it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_guard.guard.paths import contained
from mcp_guard.manifest import Manifest
from mcp_guard.policy.engine import Decision
from mcp_guard.policy.reasons import Reason
from mcp_guard.policy.targets import Target
from tests.helpers import TIMEOUT, Deployment, assert_denied, inprocess_guard, text_of


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """docs/ (allowed) with a file, a symlink out, a symlink in, and secrets/ beside it."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hello", encoding="utf-8")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key.txt").write_text("sk_live_do_not_read_me", encoding="utf-8")
    os.symlink(tmp_path / "secrets" / "key.txt", tmp_path / "docs" / "innocent.txt")
    os.symlink(tmp_path / "secrets", tmp_path / "docs" / "more")
    os.symlink(tmp_path / "docs" / "readme.txt", tmp_path / "docs" / "alias.txt")
    return tmp_path


def _manifest(root: Path, cwd: str | None = None) -> Manifest:
    upstream: dict[str, Any] = {"command": "x"} if cwd is None else {"command": "x", "cwd": cwd}
    body = {
        "server": "files",
        "upstream": upstream,
        "tools": {"read_file": {"allow": ["*"], "paths": {"path": ["docs"]}}},
    }
    return Manifest.model_validate(body).model_copy(update={"source": root / "files.yaml"})


def _decision(path: Any, folders: tuple[str, ...] = ("docs",)) -> Decision:
    return Decision(
        True, None, "allowed", Target("tool", "files", "read_file"), {"path": path}, paths={"path": folders}
    )


@pytest.mark.parametrize(
    ("path", "inside"),
    [
        ("docs/readme.txt", True),
        ("docs/alias.txt", True),  # a symlink to a file inside
        ("docs/new-file.txt", True),  # not there yet: its folder is what counts
        ("docs", True),
        ("./docs/../docs/readme.txt", True),
        ("docs/innocent.txt", False),  # a symlink inside that points outside
        ("docs/more/key.txt", False),  # a symlinked folder
        ("docs/../secrets/key.txt", False),
        ("secrets/key.txt", False),
        ("docsx/readme.txt", False),  # a sibling whose name starts the same
        ("/etc/passwd", False),
        ("~/x", False),
        ("file:///etc/passwd", False),  # a URI is not a path here
        ("docs/readme.txt\x00", False),
        ("", False),
        (7, False),
        (["docs/readme.txt", "docs/alias.txt"], True),
        (["docs/readme.txt", "docs/innocent.txt"], False),
    ],
)
def test_a_path_is_resolved_on_the_host_and_refused_outside_the_folders(
    tree: Path, monkeypatch: pytest.MonkeyPatch, path: Any, inside: bool
) -> None:
    monkeypatch.chdir(tree)  # the upstream runs here: relative paths are relative to it
    decided = contained(_decision(path), _manifest(tree))
    assert decided.allowed is inside
    if not inside:
        assert decided.reason == Reason.LIMIT_EXCEEDED
        assert decided.detail == "path must name a path inside docs (resolved on the host, symlinks followed)"


def test_relative_paths_are_relative_to_the_upstreams_folder_and_folders_to_the_manifest(tree: Path) -> None:
    (tree / "srv").mkdir()
    manifest = _manifest(tree, cwd="docs")  # the upstream runs in docs/
    assert contained(_decision("readme.txt"), manifest).allowed
    assert not contained(_decision("../secrets/key.txt"), manifest).allowed
    assert not contained(_decision("readme.txt", ("srv",)), manifest).allowed


def test_paths_on_a_remote_upstream_is_a_load_error() -> None:
    body = {
        "server": "files",
        "upstream": {"url": "https://files.example/mcp"},
        "tools": {"read_file": {"allow": ["*"], "paths": {"path": ["docs"]}}},
    }
    with pytest.raises(ValueError, match="paths: only for a command upstream"):
        Manifest.model_validate(body)


async def test_through_the_guard_a_symlink_out_of_the_folder_is_refused_and_never_read(
    deployment: Deployment, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tree)
    block = deployment.stdio_upstream("files", "tests.upstreams.files")
    deployment.add(
        "files",
        {
            "server": "files",
            "upstream": block,
            "tools": {"read_file": {"allow": ["role:support"], "paths": {"path": [str(tree / "docs")]}}},
        },
    )
    async with inprocess_guard(deployment, "support-bot") as session:
        with anyio.fail_after(TIMEOUT):
            good = await session.call_tool("files__read_file", {"path": str(tree / "docs" / "readme.txt")})
            escape = await session.call_tool(
                "files__read_file", {"path": str(tree / "docs" / "innocent.txt")}
            )
    assert text_of(good) == "hello"
    assert_denied(escape, "limit_exceeded")
    assert "sk_live" not in text_of(escape)
    assert [e["arguments"]["path"] for e in deployment.journal("files")] == [
        str(tree / "docs" / "readme.txt")
    ]
    rows = deployment.ledger()
    assert [(r["decision"], r["reason"]) for r in rows] == [("allow", None), ("deny", "limit_exceeded")]
