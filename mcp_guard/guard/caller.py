"""One client connection's view of the guard: who is calling, in which session, and the handlers
the MCP server runs for it. Process state (policy, catalog, ledger, upstreams) stays in the Guard;
what belongs to one connection lives here, so one guard serves any number of callers."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

import mcp_types as types
from mcp import MCPError
from mcp.server import ServerRequestContext

from mcp_guard.guard.app import Guard
from mcp_guard.guard.calls import Call
from mcp_guard.guard.convert import advertise
from mcp_guard.policy.engine import Agent

AGENT_SCOPE_KEY = "mcp_guard.agent"
"""Where the HTTP transport puts the authenticated Agent in the ASGI scope."""
REQUEST_AGENT: ContextVar[Agent | None] = ContextVar("mcp_guard_request_agent", default=None)
"""The same Agent, for what the SDK asks without the request in hand (`tool_input_schema`)."""


@dataclass
class Caller:
    """stdio: one caller for the one client, its agent fixed by `serve --agent` and its
    connection the session. HTTP: one caller for every request; each request's agent is the one
    its credential authenticated, and its session the MCP session id it carries."""

    guard: Guard
    agent_name: str | None = None  # stdio: fixed at start; HTTP: None, taken from each request
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def identify(self, ctx: ServerRequestContext[Any, Any]) -> Agent:
        """stdio: the agent fixed at start, under its roles in the policy in force (an agent
        removed from guard.yaml keeps its name and sees nothing). HTTP: the Agent the transport
        authenticated for this very request."""
        agent: Any = None
        if self.agent_name is not None:
            known = self.guard.policy.agents.get(self.agent_name) or Agent(self.agent_name, frozenset())
            agent = replace(known, credential="stdio")
        elif ctx.request is not None:
            agent = ctx.request.scope.get(AGENT_SCOPE_KEY)
        if not isinstance(agent, Agent):
            raise MCPError(types.INVALID_REQUEST, "no agent identity for this request")
        self.guard.watch_session(ctx)
        return agent

    def session_of(self, ctx: ServerRequestContext[Any, Any]) -> str | None:
        """HTTP: the MCP session id, if the client has one. stdio: the connection is the session."""
        if ctx.request is not None:
            sid = ctx.request.headers.get("mcp-session-id")
            return str(sid)[:128] if sid else None
        return self.session_id

    def tool_input_schema(self, name: str) -> Mapping[str, Any] | None:
        """For the SDK's check of a 2026-era request's `Mcp-Param-*` headers: the schema this
        request's agent is shown for `name`, from the offers the guard has ready, instead of the
        whole `tools/list` the SDK would run for every call. None (the headers go unchecked, as
        when the SDK's own lookup fails; the guard checks the arguments themselves either way)
        for a tool the agent is not shown, or before its offers are ready."""
        agent = REQUEST_AGENT.get()
        offers = self.guard.ready_offers(agent.name) if agent is not None else None
        offer = offers.get(name) if offers is not None else None
        return offer.input_schema if offer is not None else None

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        guard = self.guard
        policy, scrubber = guard.policy, guard.scrubber
        offers = await guard.offers(self.identify(ctx), policy, scrubber)
        return types.ListToolsResult(tools=[advertise(o, scrubber) for o in offers.values()])

    async def set_logging_level(
        self, ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        """Accepted from any agent; upstream log messages at `level` and above reach this connection
        from servers whose manifest relays them and where the agent has a grant."""
        self.guard.exchanges.listen(ctx, self.identify(ctx).name, params.level)
        return types.EmptyResult()

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        agent = self.identify(ctx)
        async with self.guard.telemetry.call(agent.name, params.name, ctx.meta):
            if params.request_state is not None:  # a round of a call in progress, with its answers
                rounds = self.guard.exchanges.rounds
                return await rounds.resume(
                    params.request_state, agent.name, params.name, params.input_responses
                )
            return await Call(self.guard, agent, self.session_of(ctx), ctx, params).run()
