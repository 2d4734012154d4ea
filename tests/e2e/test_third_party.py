"""The real guard in front of a server we did not write: `mcp-server-time` from PyPI."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import MCPError

from tests.helpers import TIMEOUT, Deployment, assert_denied, stdio_guard, text_of

TIME_SERVER = Path(sys.executable).parent / "mcp-server-time"


@pytest.fixture
def time_deployment(deployment: Deployment) -> Deployment:
    if not TIME_SERVER.exists():
        pytest.fail(f"{TIME_SERVER.name} is not installed next to the interpreter: install the dev extra")
    return deployment.add(
        "time",
        {
            "server": "time",
            "upstream": {"command": str(TIME_SERVER), "args": ["--local-timezone", "UTC"], "timeout": "30s"},
            "tools": {
                "get_current_time": {
                    "allow": ["role:support"],
                    "arguments": {"timezone": {"enum": ["UTC", "Europe/Paris"]}},
                }
            },
        },
    )


async def test_a_third_party_server_behind_the_guard_is_limited_relayed_and_recorded(
    time_deployment: Deployment,
) -> None:
    # Config and agent from the environment, as a client config that sets `env` would pass them.
    async with stdio_guard(time_deployment, "support-bot", from_environment=True) as session:
        with anyio.fail_after(TIMEOUT):
            listed = (await session.list_tools()).tools
            utc = await session.call_tool("time__get_current_time", {"timezone": "UTC"})
            paris = await session.call_tool("time__get_current_time", {"timezone": "Europe/Paris"})
            new_york = await session.call_tool("time__get_current_time", {"timezone": "America/New_York"})
            with pytest.raises(MCPError) as convert:
                await session.call_tool(
                    "time__convert_time",
                    {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
                )

    assert [tool.name for tool in listed] == ["time__get_current_time"]
    schema = listed[0].input_schema
    assert schema["properties"]["timezone"]["enum"] == ["UTC", "Europe/Paris"]
    assert schema["properties"]["timezone"]["type"] == "string"
    assert schema["additionalProperties"] is False
    assert listed[0].output_schema is not None
    assert listed[0].annotations is not None
    assert listed[0].annotations.read_only_hint is True

    for result, zone in ((utc, "UTC"), (paris, "Europe/Paris")):
        assert result.is_error is False, text_of(result)
        assert isinstance(result.structured_content, dict)
        assert result.structured_content["timezone"] == zone
        assert result.structured_content["datetime"]
        assert zone in text_of(result)
    assert_denied(new_york, "limit_exceeded")
    assert convert.value.error.code == types.INVALID_PARAMS
    assert convert.value.error.message == "Unknown tool: time__convert_time"

    rows = time_deployment.ledger()
    assert [(r["server"], r["tool"], r["decision"], r["reason"], r["outcome"]) for r in rows] == [
        ("time", "get_current_time", "allow", None, "ok"),
        ("time", "get_current_time", "allow", None, "ok"),
        ("time", "get_current_time", "deny", "limit_exceeded", None),
        (None, "time__convert_time", "deny", "unknown_tool", None),
    ]
    assert rows[2]["arguments"] == {"timezone": "America/New_York"}
