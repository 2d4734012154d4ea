"""An upstream built on the SDK's own high-level MCPServer, typed as real servers are: `amount:
Decimal` is advertised as number-or-string and a string is converted, so "5000" refunds 5000. Run
with `python -m tests.upstreams.decimal_refunds` from the repository root; every call is journaled
before it runs."""

from __future__ import annotations

import json
from decimal import Decimal

from mcp.server.mcpserver import MCPServer

from mcp_guard.examples.journal import journal_path

server = MCPServer("decimal-refunds")


@server.tool()
def refund(order_id: str, amount: Decimal) -> str:
    """Refund an order."""
    path = journal_path()
    if path is not None:
        with path.open("a", encoding="utf-8") as handle:
            entry = {
                "server": "refunds",
                "tool": "refund",
                "arguments": {"order_id": order_id, "amount": str(amount)},
            }
            handle.write(json.dumps(entry) + "\n")
    return f"refunded {amount} on {order_id}"


if __name__ == "__main__":
    server.run()
