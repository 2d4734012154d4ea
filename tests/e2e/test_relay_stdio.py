"""The real `mcp-guard serve` over real stdio, in front of the hostile upstream run as a process,
with its manifest opting in to relaying (`upstream.relay`): the upstream's sampling request reaches
the client capped, its log message reaches the client scrubbed, and the ledger file holds a
`sampling` entry that records what happened and nothing of what was said."""

from __future__ import annotations

import warnings
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPDeprecationWarning

from tests.helpers import HOSTILE_SECRET, TIMEOUT, Deployment, assert_no_secret, ledger_events, stdio_guard


async def test_over_stdio_an_opted_in_upstreams_sampling_and_logs_reach_the_caller_capped_and_scrubbed(
    deployment: Deployment,
) -> None:
    deployment.with_hostile(relay={"sampling": {"max_tokens": 64}, "logging": True})
    asked: list[types.CreateMessageRequestParams] = []
    logs: list[types.LoggingMessageNotificationParams] = []
    heard = anyio.Event()

    async def sampling(_: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append(params)
        return types.CreateMessageResult(role="assistant", content=types.TextContent(text="no"), model="m")

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)
        heard.set()

    async with stdio_guard(
        deployment, "qa-bot", sampling_callback=sampling, logging_callback=on_log
    ) as session:
        with anyio.fail_after(TIMEOUT):
            with warnings.catch_warnings():  # deprecated by 2026-07-28, not by the version spoken here
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await session.set_logging_level("info")
            sampled = await session.call_tool("hostile__ask_sampling", {})
            await session.call_tool("hostile__log", {"text": f"token {HOSTILE_SECRET}"})
            await heard.wait()
    assert isinstance(sampled.structured_content, dict)
    assert sampled.structured_content["outcome"] == "answered"
    (params,) = asked
    assert params.max_tokens == 64  # the upstream asked for 200
    (log,) = logs
    assert log.level == "warning"
    assert_no_secret(str(log.data), HOSTILE_SECRET)
    entries = ledger_events(deployment.ledger_path, "sampling")
    assert [(e["tool"], e["action"], e["max_tokens"], e["capped"]) for e in entries] == [
        ("ask_sampling", "completed", 64, True)
    ]
    assert "secret" not in str(entries)
