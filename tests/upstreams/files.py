"""A small local file server, as filesystem upstreams are: `read_file(path)` opens the path it is
given, relative to its working folder, following symlinks, with no containment of its own. Run
with `python -m tests.upstreams.files` from the repository root (the journal is named by the
environment), or build it in-process with `build_server(journal)`; every call is journaled before
it runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mcp.server import Server
from mcp.server.mcpserver import MCPServer

from mcp_guard.examples.journal import journal_path


def build(journal: Path | None) -> MCPServer:
    server = MCPServer("files")

    @server.tool()
    def read_file(path: str) -> str:
        """Read a text file."""
        if journal is not None:
            with journal.open("a", encoding="utf-8") as handle:
                handle.write(
                    json.dumps({"server": "files", "tool": "read_file", "arguments": {"path": path}}) + "\n"
                )
        return Path(path).expanduser().read_text(encoding="utf-8")

    return server


def build_server(journal: Path | None) -> Server[Any]:
    """The low-level server under the MCPServer, as the SDK's own in-memory transport takes it."""
    return build(journal)._lowlevel_server


if __name__ == "__main__":
    build(journal_path()).run()
