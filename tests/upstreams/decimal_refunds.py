"""An upstream built on the SDK's own high-level MCPServer, typed as real servers are: `amount:
Decimal` is advertised as number-or-string and a string is converted, so "5000" refunds 5000. Run
with `python -m tests.upstreams.decimal_refunds` from the repository root (the journal is named by
the environment), or build it in-process with `build_server(journal)`; every call is journaled
before it runs."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from mcp.server import Server
from mcp.server.mcpserver import MCPServer

from mcp_guard.examples.journal import journal_path


def build(journal: Path | None) -> MCPServer:
    server = MCPServer("decimal-refunds")

    @server.tool()
    def refund(order_id: str, amount: Decimal) -> str:
        """Refund an order."""
        if journal is not None:
            with journal.open("a", encoding="utf-8") as handle:
                entry = {
                    "server": "refunds",
                    "tool": "refund",
                    "arguments": {"order_id": order_id, "amount": str(amount)},
                }
                handle.write(json.dumps(entry) + "\n")
        return f"refunded {amount} on {order_id}"

    return server


def build_server(journal: Path | None) -> Server[Any]:
    """The low-level server under the MCPServer, as the SDK's own in-memory transport takes it."""
    return build(journal)._lowlevel_server


if __name__ == "__main__":
    build(journal_path()).run()
