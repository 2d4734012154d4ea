"""An upstream that asks things of its client while it serves a call: elicitation (form and URL
mode), sampling, log messages, a request in the 2026-07-28 multi-round-trip form (an
`InputRequiredResult`), and one sent after its call has ended (unsolicited). Each tool says in
its result what the guard answered, so tests can see what the upstream heard. In-process only:
`build_server(observed)` makes it for the guard's in-memory transport; `observed` sees what the
upstream's session declared and what an unsolicited request got back."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp import MCPError
from mcp.server import Server, ServerRequestContext

SECRET_ENV = "ASKING_SECRET"
PERSON = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def _schema(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "additionalProperties": False}


STRING = {"type": "string"}
TOOLS = [
    types.Tool(name="elicit", input_schema=_schema(message=STRING)),
    types.Tool(name="elicit_url", input_schema=_schema(url=STRING)),
    types.Tool(
        name="sample",
        input_schema=_schema(prompt=STRING, max_tokens={"type": "integer"}, context=STRING),
    ),
    types.Tool(name="log", input_schema=_schema(level=STRING, text=STRING, count={"type": "integer"})),
    types.Tool(name="ask_later", input_schema=_schema()),
    types.Tool(name="input_required", input_schema=_schema(message=STRING)),
]


@dataclass
class Observed:
    """What the upstream saw beyond its calls."""

    capabilities: list[types.ClientCapabilities | None] = field(default_factory=list)
    release: anyio.Event = field(default_factory=anyio.Event)  # set: ask_later's request goes out
    later: list[str] = field(default_factory=list)  # what the unsolicited request got back
    later_done: anyio.Event = field(default_factory=anyio.Event)


def _text(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)])


def _said(result: Any) -> str:
    if isinstance(result, types.ElicitResult):
        return f"{result.action} {json.dumps(result.content, sort_keys=True)}"
    content = getattr(result, "content", None)
    return f"sampled {getattr(content, 'text', content)!s}"


async def _ask(ctx: ServerRequestContext[Any, Any], name: str, args: dict[str, Any]) -> str:
    session, related = ctx.session, ctx.request_id
    with warnings.catch_warnings():  # sampling and logging are deprecated by 2026-07-28, not before
        warnings.simplefilter("ignore")
        if name == "elicit":
            return _said(await session.elicit_form(args["message"], PERSON, related_request_id=related))
        if name == "elicit_url":
            url, message = args["url"], f"Sign in at {args['url']}"
            return _said(await session.elicit_url(message, url, "e-1", related_request_id=related))
        if name == "sample":
            message = types.SamplingMessage(role="user", content=types.TextContent(text=args["prompt"]))
            return _said(
                await session.create_message(
                    [message],
                    max_tokens=int(args.get("max_tokens", 100)),
                    system_prompt=f"system: {args['prompt']}",
                    include_context=args.get("context"),
                    related_request_id=related,
                )
            )
        if name == "log":  # `count` times: a flood, for the guard to bound
            for _ in range(int(args.get("count", 1))):
                await session.send_log_message(args["level"], {"text": args["text"]}, "asking", related)
            return "logged"
    raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name}")


def build_server(observed: Observed, secret: str = "") -> Server[Any]:
    @asynccontextmanager
    async def lifespan(_: Server[Any]) -> AsyncIterator[dict[str, Any]]:
        async with anyio.create_task_group() as tg:
            yield {"tg": tg}
            tg.cancel_scope.cancel()

    async def later(ctx: ServerRequestContext[Any, Any]) -> None:
        await observed.release.wait()
        try:  # on the connection, tied to no request: the call it came from is over
            result = await ctx.session.elicit_form("unsolicited", PERSON)
            observed.later.append(_said(result))
        except MCPError as exc:
            observed.later.append(f"error {exc.error.message}")
        observed.later_done.set()

    async def list_tools(ctx: ServerRequestContext[Any, Any], _: Any) -> types.ListToolsResult:
        observed.capabilities.append(ctx.session.client_capabilities)
        return types.ListToolsResult(tools=TOOLS)

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
        args = {k: str(v).replace("SECRET", secret) for k, v in (params.arguments or {}).items()}
        if params.name == "ask_later":
            ctx.lifespan_context["tg"].start_soon(later, ctx)
            return _text("later")
        if params.name == "input_required":
            if not params.input_responses:  # first round: ask, in the multi-round-trip form
                ask = types.ElicitRequest(
                    params=types.ElicitRequestFormParams(message=args["message"], requested_schema=PERSON)
                )
                return types.InputRequiredResult(input_requests={"who": ask}, request_state="round-1")
            answer = types.ElicitResult.model_validate(params.input_responses["who"])
            return _text(f"{params.request_state} {_said(answer)}")
        try:
            return _text(await _ask(ctx, params.name, args))
        except MCPError as exc:
            return _text(f"error {exc.error.message}")

    return Server("asking", lifespan=lifespan, on_list_tools=list_tools, on_call_tool=call_tool)
