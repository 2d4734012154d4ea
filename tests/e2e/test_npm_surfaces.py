"""The real `mcp-guard serve` over stdio in front of the reference servers from npm,
@modelcontextprotocol/server-everything and server-filesystem (pinned, installed once into pytest's
cache): resources and prompts granted in part, listing equals reading, and neither `..` nor a
symlink widens what can be read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import MCPError

from tests.e2e import npm
from tests.helpers import Deployment, dumped, stdio_guard

PACKAGES = [
    "@modelcontextprotocol/server-everything@2026.8.31",
    "@modelcontextprotocol/server-filesystem@2026.8.31",
]
ENTRIES = [
    "node_modules/@modelcontextprotocol/server-everything/dist/index.js",
    "node_modules/@modelcontextprotocol/server-filesystem/dist/index.js",
]
DOCS = "demo://resource/static/document/"


@pytest.fixture(scope="session")
def servers(request: pytest.FixtureRequest) -> list[Path]:
    return npm.install(npm.cache_folder(request.config, "mcp-reference-servers"), PACKAGES, ENTRIES)


def decisions(d: Deployment) -> list[tuple[Any, ...]]:
    import sqlite3

    conn = sqlite3.connect(d.ledger_path)
    try:
        return conn.execute(
            "SELECT method, server, tool, decision, reason FROM entries WHERE kind = 'decision' ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


async def test_reference_servers_show_and_serve_only_what_is_granted(
    servers: list[Path], tmp_path: Path
) -> None:
    everything, filesystem = servers
    root = tmp_path / "files"
    root.mkdir()
    (root / "kb.txt").write_text("public notes", encoding="utf-8")
    (tmp_path / "outside.txt").write_text("payroll", encoding="utf-8")
    (root / "link.txt").symlink_to(tmp_path / "outside.txt")
    d = Deployment(tmp_path / "guard")
    d.add(
        "everything",
        {
            "server": "everything",
            "upstream": {"command": npm.node(), "args": [str(everything)]},
            "resources": [
                {"allow": ["role:support"], "uris": [f"{DOCS}*.md", "demo://resource/dynamic/text/*"]}
            ],
            "prompts": {
                "args-prompt": {
                    "allow": ["role:support"],
                    "arguments": {"city": {"enum": ["Paris", "Berlin"]}},
                },
                "resource-prompt": {"allow": ["role:support"]},
                "completable-prompt": {
                    "allow": ["role:support"],
                    "arguments": {"department": {"enum": ["Engineering", "Support"]}},
                },
            },
        },
    )
    d.add(
        "files",
        {
            "server": "files",
            "upstream": {"command": npm.node(), "args": [str(filesystem), str(root)]},
            "resources": [{"allow": ["role:support"], "uris": [f"file://{root}/**"]}],
        },
    )
    async with stdio_guard(d, "support-bot") as session:
        listed = sorted(str(r.uri) for r in (await session.list_resources()).resources)
        assert listed
        assert all(uri.startswith(DOCS) and uri.endswith(".md") for uri in listed)
        for uri in listed:  # listing equals reading
            assert (await session.read_resource(uri)).contents
        templates = [t.uri_template for t in (await session.list_resource_templates()).resource_templates]
        assert templates == ["demo://resource/dynamic/text/{resourceId}"]
        assert "Resource 3" in dumped(await session.read_resource("demo://resource/dynamic/text/3"))
        refused = [
            "demo://resource/dynamic/blob/3",
            f"{DOCS}../../dynamic/blob/3",
            f"{DOCS}%2e%2e/features.md",
            f"file://{root}/../outside.txt",
        ]
        for uri in refused:
            with pytest.raises(MCPError) as caught:
                await session.read_resource(uri)
            assert caught.value.error.code == -32002, uri
        # The filesystem server lists no resources and serves no reads: a symlink inside the granted
        # folder is forwarded as a URI, and the upstream's refusal is all that comes back.
        with pytest.raises(MCPError) as caught:
            await session.read_resource(f"file://{root}/link.txt")
        assert "payroll" not in caught.value.error.message
        prompts = sorted(p.name for p in (await session.list_prompts()).prompts)
        assert prompts == [
            "everything__args-prompt",
            "everything__completable-prompt",
            "everything__resource-prompt",
        ]
        assert "Paris" in dumped(await session.get_prompt("everything__args-prompt", {"city": "Paris"}))
        with pytest.raises(MCPError) as caught:
            await session.get_prompt("everything__args-prompt", {"city": "Rome"})
        assert caught.value.error.message.startswith("denied (limit_exceeded): ")
        text = await session.get_prompt(
            "everything__resource-prompt", {"resourceType": "Text", "resourceId": "2"}
        )
        assert any(m.content.type == "resource" for m in text.messages)
        blob = await session.get_prompt(
            "everything__resource-prompt", {"resourceType": "Blob", "resourceId": "2"}
        )
        withheld = types.TextContent(type="text", text="[withheld: demo://resource/dynamic/blob/2]")
        assert withheld in [m.content for m in blob.messages]
        ref = types.PromptReference(type="ref/prompt", name="everything__completable-prompt")
        done = await session.complete(ref, {"name": "department", "value": ""})
        assert done.completion.values == ["Engineering", "Support"]
    denied = [row for row in decisions(d) if row[3] == "deny"]
    assert [(row[0], row[4]) for row in denied] == [("resources/read", "unknown_resource")] * 4 + [
        ("prompts/get", "limit_exceeded")
    ]
    link = [row for row in decisions(d) if row[2] == f"file://{root}/link.txt"]
    assert [(row[1], row[3]) for row in link] == [("files", "allow")]
