"""What the guard tells the SDK when a 2026-era HTTP request's `Mcp-Param-*` headers are checked:
the schema the request's own agent is shown, from the offers the guard has ready, never another
agent's tool and never a `tools/list` per call."""

from __future__ import annotations

from mcp_guard.guard.app import open_guard
from mcp_guard.guard.caller import REQUEST_AGENT, Caller
from mcp_guard.policy.engine import Agent
from tests.helpers import Deployment, memory_transports


async def test_the_lookup_answers_from_the_agents_ready_offers_and_hides_what_it_is_not_shown(
    deployment: Deployment,
) -> None:
    deployment.with_billing()
    config, manifests = deployment.load()
    support = Agent("support-bot", frozenset({"support"}))
    async with open_guard(config, manifests, ("support-bot",), memory_transports(manifests)) as guard:
        caller = Caller(guard)
        assert caller.tool_input_schema("billing__refund") is None  # no agent: nothing to say
        offers = await guard.offers(support)
        token = REQUEST_AGENT.set(support)
        try:
            assert caller.tool_input_schema("billing__refund") == offers["billing__refund"].input_schema
            assert caller.tool_input_schema("billing__refund")["properties"]["amount"]["maximum"] == 100  # type: ignore[index]
            assert caller.tool_input_schema("billing__diagnostics") is None  # finance's tool: hidden
            assert caller.tool_input_schema("billing__nothing") is None
            await guard.reload(config, manifests)  # a new policy: not ready until built again
            assert caller.tool_input_schema("billing__refund") is None
            await guard.offers(support)
            assert caller.tool_input_schema("billing__refund") is not None
        finally:
            REQUEST_AGENT.reset(token)
