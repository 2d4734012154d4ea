"""The real guard in front of a server we did not write: `mcp-server-time` from PyPI."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import MCPError

from tests.helpers import TIMEOUT, Deployment, assert_denied, ledger_bytes, stdio_guard, text_of

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


async def test_a_grant_fixes_an_argument_overrides_the_text_and_keeps_a_sensitive_value_out_of_the_ledger(
    time_deployment: Deployment,
) -> None:
    tools = time_deployment.manifests["time"]["tools"]
    paris_only = {
        "allow": ["finance-bot"],
        "set": {"timezone": "Europe/Paris"},
        "title": "Paris time",
        "description": "The current time in the Paris office.",
    }
    tools["get_current_time"] = [tools["get_current_time"], paris_only]
    tools["convert_time"] = {"allow": ["finance-bot"], "required": ["time"], "sensitive": ["time"]}
    async with stdio_guard(time_deployment, "finance-bot") as session:
        with anyio.fail_after(TIMEOUT):
            listed = {t.name: t for t in (await session.list_tools()).tools}
            paris = await session.call_tool("time__get_current_time", {})
            chosen = await session.call_tool("time__get_current_time", {"timezone": "UTC"})
            converted = await session.call_tool(
                "time__convert_time",
                {"source_timezone": "UTC", "time": "12:34", "target_timezone": "Asia/Tokyo"},
            )

    fixed = listed["time__get_current_time"]
    assert "timezone" not in fixed.input_schema["properties"]
    assert "timezone" not in fixed.input_schema.get("required", [])
    assert (fixed.title, fixed.description) == ("Paris time", "The current time in the Paris office.")
    assert paris.is_error is False, text_of(paris)
    assert isinstance(paris.structured_content, dict)
    assert paris.structured_content["timezone"] == "Europe/Paris"  # what the guard sent
    assert_denied(chosen, "limit_exceeded")
    assert (
        text_of(chosen) == "denied (limit_exceeded): timezone is set by the guard for this tool; leave it out"
    )
    assert converted.is_error is False, text_of(converted)
    assert "21:34" in text_of(converted)  # the upstream got the real value

    rows = time_deployment.ledger()
    assert [(r["tool"], r["decision"], r["reason"]) for r in rows] == [
        ("get_current_time", "allow", None),
        ("get_current_time", "deny", "limit_exceeded"),
        ("convert_time", "allow", None),
    ]
    assert rows[0]["arguments"] == {"timezone": "Europe/Paris"}  # recorded as forwarded
    recorded = rows[2]["arguments"]["time"]
    assert recorded.startswith("[sensitive sha256:")
    assert b"12:34" not in ledger_bytes(time_deployment.ledger_path)


async def test_a_selector_grants_the_read_only_tools_of_a_server_we_did_not_write(
    time_deployment: Deployment,
) -> None:
    manifest = time_deployment.manifests["time"]
    manifest["tools"] = {"convert_time": {"allow": []}}  # named: only its own (empty) grant
    manifest["select"] = [{"read_only": True, "allow": ["role:support"]}]
    async with stdio_guard(time_deployment, "support-bot") as session:
        with anyio.fail_after(TIMEOUT):
            listed = [t.name for t in (await session.list_tools()).tools]
            utc = await session.call_tool("time__get_current_time", {"timezone": "UTC"})
    assert listed == ["time__get_current_time"]  # it says readOnlyHint: true; convert_time is named
    assert utc.is_error is False, text_of(utc)
