"""The floor: a bare pass-through MCP proxy on the same SDK as the guard (no policy, no ledger).

    python benchmarks/bare_proxy.py [--http PORT] -- COMMAND [ARGS...]

Serves stdio, or with `--http PORT` Streamable HTTP at http://127.0.0.1:PORT/mcp as the SDK ships it
for throughput (`stateless_http=True, json_response=True`); lists and calls through one
ClientSession to the upstream COMMAND (stdio). The SDK's default telemetry middleware is removed, as
the guard removes it, so the comparison is fair.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp.types as types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server


def build_server(command: str, args: list[str]) -> Server[Any]:
    @asynccontextmanager
    async def lifespan(_: Server[Any]) -> AsyncIterator[ClientSession]:
        params = StdioServerParameters(command=command, args=args)
        async with stdio_client(params, errlog=sys.stderr) as (read, write), ClientSession(read, write) as up:
            await up.initialize()
            yield up

    async def list_tools(
        ctx: ServerRequestContext[ClientSession], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return await ctx.lifespan_context.list_tools()

    async def call_tool(
        ctx: ServerRequestContext[ClientSession], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return await ctx.lifespan_context.call_tool(params.name, params.arguments or {})

    server: Server[Any] = Server(
        "bare-proxy", version="1.0", lifespan=lifespan, on_list_tools=list_tools, on_call_tool=call_tool
    )
    server.middleware = []
    return server


async def serve(command: str, args: list[str]) -> None:
    server = build_server(command, args)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def serve_http(command: str, args: list[str], port: int) -> None:
    """The SDK's own Streamable HTTP app, stateless with JSON responses: its cheapest HTTP form."""
    import uvicorn

    server = build_server(command, args)
    app = server.streamable_http_app(stateless_http=True, json_response=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def main() -> None:
    argv = sys.argv[1:]
    port = None
    if argv[:1] == ["--http"] and len(argv) > 1 and argv[1].isdigit():
        port, argv = int(argv[1]), argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: bare_proxy.py [--http PORT] -- COMMAND [ARGS...]", file=sys.stderr)
        sys.exit(2)
    command = sys.executable if argv[0] in ("python", "python3") else argv[0]
    if port is not None:
        serve_http(command, argv[1:], port)
    else:
        anyio.run(serve, command, argv[1:])


if __name__ == "__main__":
    main()
