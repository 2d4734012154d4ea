"""What the example upstreams share: a low-level MCP server over a table of tools and handlers
that checks arguments against each tool's own schema, journals every call, and never sends a
traceback; and the stdio entry point that insists on the upstream's credential and finds the
journal in the environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import jsonschema
import mcp.types as types
from mcp import MCPError
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

from mcp_guard.examples.journal import journal_path, record_call

State = TypeVar("State")
Handler = Callable[[State, dict[str, Any]], types.CallToolResult]


def error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)


def tool_server(
    name: str,
    tools: Sequence[types.Tool],
    handlers: Mapping[str, Handler[State]],
    state: State,
    journal: Path | None = None,
) -> Server[Any]:
    """A low-level MCP server for the tools, each call handled by `handlers[tool](state, args)`
    and first recorded in the journal at `journal` (None: not recorded)."""
    by_name = {t.name: t for t in tools}

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list(tools))

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        record_call(journal, name, ctx, params)
        tool = by_name.get(params.name)
        if tool is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
        args = params.arguments or {}
        try:
            jsonschema.validate(args, tool.input_schema)
        except jsonschema.ValidationError as exc:
            return error(f"Invalid arguments for {tool.name}: {exc.message}")
        try:
            return handlers[tool.name](state, args)
        except Exception as exc:  # a tool bug must not send its traceback text to the client
            print(f"{name} example: {tool.name} failed: {exc!r}", file=sys.stderr)
            return error(f"Internal error in {tool.name}")

    return Server(name, version="1.0.0", on_list_tools=list_tools, on_call_tool=call_tool)


def run_stdio(name: str, credential_env: str, build: Callable[[str, Path | None], Server[Any]]) -> None:
    """Serve over stdio, journaling where the environment says; exit 1 with one line if the
    upstream's credential is not set."""
    credential = os.environ.get(credential_env, "")
    if not credential:
        print(f"{name} example: environment variable {credential_env} is required", file=sys.stderr)
        sys.exit(1)
    server = build(credential, journal_path())

    async def serve() -> None:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

    anyio.run(serve)
