"""The benchmark's upstream: a small low-level MCP server over stdio whose `echo` tool answers at once.

`--tools N` (or BENCH_UPSTREAM_TOOLS=N) also serves N more tools `tool_0000`.. with the same schema,
for the tools/list measurement. Runs with the SDK alone: no mcp_guard import.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import anyio
import mcp.types as types
from mcp import MCPError
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

SCHEMA = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string", "description": "Order id, e.g. ORD-000001"},
        "amount": {"type": "number", "description": "Amount in the order's currency"},
    },
    "required": ["order_id", "amount"],
    "additionalProperties": False,
}


def make_tools(extra: int) -> list[types.Tool]:
    echo = types.Tool(
        name="echo",
        title="Echo an order",
        description="Return the order id and amount it was given.",
        input_schema=SCHEMA,
        annotations=types.ToolAnnotations(read_only_hint=True),
    )
    more = [
        types.Tool(
            name=f"tool_{i:04d}",
            title=f"Tool {i}",
            description=f"Benchmark tool number {i}: returns the order id and amount it was given.",
            input_schema=SCHEMA,
        )
        for i in range(extra)
    ]
    return [echo, *more]


def build_server(extra: int) -> Server[Any]:
    tools = make_tools(extra)
    names = {t.name for t in tools}

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        if params.name not in names:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
        args = params.arguments or {}
        text = json.dumps({"order_id": args.get("order_id"), "amount": args.get("amount"), "ok": True})
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    server: Server[Any] = Server(
        "bench-upstream", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool
    )
    server.middleware = []  # same upstream for every path; no telemetry noise
    return server


async def serve(extra: int) -> None:
    server = build_server(extra)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tools", type=int, default=int(os.environ.get("BENCH_UPSTREAM_TOOLS", "0")))
    args = p.parse_args()
    anyio.run(serve, args.tools)


if __name__ == "__main__":
    main()
