"""The bundled example upstreams and the hostile test upstream, driven by a real MCP stdio client."""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO, cast

import anyio
import mcp.types as types
import pytest
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client

from mcp_guard.examples.journal import JOURNAL_ENV, read_journal

REPO_ROOT = Path(__file__).resolve().parents[2]
BILLING_KEY = "sk_live_billing_7f3a9c2e"
TICKETS_TOKEN = "tkt_token_51b0"
HOSTILE_SECRET = 'hs/sec+ret="42"'
TIMEOUT = 30.0


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "journal.jsonl"


@pytest.fixture
def errlog(tmp_path: Path) -> Iterator[TextIO]:
    with (tmp_path / "upstream-stderr.log").open("w", encoding="utf-8") as handle:
        yield handle


@asynccontextmanager
async def connect(module: str, env: dict[str, str], errlog: TextIO) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=sys.executable, args=["-m", module], env=env, cwd=str(REPO_ROOT))
    async with (
        stdio_client(params, errlog=errlog) as (read, write),
        ClientSession(read, write, read_timeout_seconds=TIMEOUT) as session,
    ):
        await session.initialize()
        yield session


def billing_env(journal: Path) -> dict[str, str]:
    return {"BILLING_API_KEY": BILLING_KEY, JOURNAL_ENV: str(journal)}


async def test_billing_lists_four_tools_with_closed_input_schemas(journal: Path, errlog: TextIO) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect("mcp_guard.examples.billing", billing_env(journal), errlog) as session:
            listed = await session.list_tools()
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == {"lookup_order", "refund", "set_payout_destination", "diagnostics"}
    for tool in tools.values():
        assert tool.input_schema["type"] == "object"
        assert tool.input_schema["additionalProperties"] is False
        assert tool.title
        assert tool.annotations is not None
    refund = tools["refund"].input_schema
    assert refund["required"] == ["order_id", "amount", "currency"]
    assert refund["properties"]["amount"]["exclusiveMinimum"] == 0
    assert refund["properties"]["currency"]["enum"] == ["USD", "EUR", "GBP"]
    assert tools["lookup_order"].annotations is not None
    assert tools["lookup_order"].annotations.read_only_hint is True
    assert read_journal(journal) == []


async def test_lookup_order_returns_the_order_and_journals_the_call_with_its_meta(
    journal: Path, errlog: TextIO
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect("mcp_guard.examples.billing", billing_env(journal), errlog) as session:
            meta = cast(types.RequestParamsMeta, {"trace": "t-1"})
            found = await session.call_tool("lookup_order", {"order_id": "ORD-1002"}, meta=meta)
            missing = await session.call_tool("lookup_order", {"order_id": "ORD-9999"})
    assert found.is_error is False
    assert found.structured_content == {
        "order_id": "ORD-1002",
        "amount": 120.0,
        "currency": "EUR",
        "customer": "bob@example.com",
        "refunded": 0.0,
    }
    assert missing.is_error is True
    assert read_journal(journal) == [
        {
            "server": "billing",
            "tool": "lookup_order",
            "arguments": {"order_id": "ORD-1002"},
            "meta": {"trace": "t-1"},
        },
        {"server": "billing", "tool": "lookup_order", "arguments": {"order_id": "ORD-9999"}, "meta": None},
    ]


async def test_refund_returns_a_refund_id_and_refuses_more_than_the_order_amount(
    journal: Path, errlog: TextIO
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect("mcp_guard.examples.billing", billing_env(journal), errlog) as session:
            first = await session.call_tool(
                "refund", {"order_id": "ORD-1001", "amount": 40, "currency": "USD", "note": "damaged"}
            )
            too_much = await session.call_tool(
                "refund", {"order_id": "ORD-1001", "amount": 10, "currency": "USD"}
            )
            zero = await session.call_tool("refund", {"order_id": "ORD-1001", "amount": 0, "currency": "USD"})
            after = await session.call_tool("lookup_order", {"order_id": "ORD-1001"})
    assert first.is_error is False
    assert isinstance(first.structured_content, dict)
    assert first.structured_content["refund_id"].startswith("RF-")
    assert first.structured_content["refunded_total"] == 40.0
    assert too_much.is_error is True
    assert zero.is_error is True
    assert isinstance(after.structured_content, dict)
    assert after.structured_content["refunded"] == 40.0
    entries = read_journal(journal)
    assert [entry["tool"] for entry in entries] == ["refund", "refund", "refund", "lookup_order"]
    assert entries[2]["arguments"] == {"order_id": "ORD-1001", "amount": 0, "currency": "USD"}


async def test_diagnostics_leaks_the_api_key_raw_and_base64_encoded(journal: Path, errlog: TextIO) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect("mcp_guard.examples.billing", billing_env(journal), errlog) as session:
            result = await session.call_tool("diagnostics", {})
    encoded = base64.b64encode(BILLING_KEY.encode()).decode()
    text = "".join(getattr(block, "text", "") for block in result.content)
    assert BILLING_KEY in text
    assert encoded in text
    assert isinstance(result.structured_content, dict)
    assert result.structured_content["api_key"] == BILLING_KEY
    assert result.structured_content["api_key_b64"] == encoded


@pytest.mark.parametrize(
    ("module", "variable"),
    [("mcp_guard.examples.billing", "BILLING_API_KEY"), ("mcp_guard.examples.tickets", "TICKETS_API_TOKEN")],
)
async def test_an_example_refuses_to_start_without_its_credential(module: str, variable: str) -> None:
    env = {key: value for key, value in os.environ.items() if key != variable}
    with anyio.fail_after(TIMEOUT):
        done = await anyio.run_process([sys.executable, "-m", module], env=env, cwd=REPO_ROOT, check=False)
    assert done.returncode == 1
    assert variable in done.stderr.decode()


async def test_closing_a_ticket_shows_in_get_ticket_and_is_journaled(journal: Path, errlog: TextIO) -> None:
    env = {"TICKETS_API_TOKEN": TICKETS_TOKEN, JOURNAL_ENV: str(journal)}
    with anyio.fail_after(TIMEOUT):
        async with connect("mcp_guard.examples.tickets", env, errlog) as session:
            listed = await session.list_tools()
            search = await session.call_tool("search_tickets", {"query": "refund", "status": "open"})
            closed = await session.call_tool("close_ticket", {"ticket_id": "T-104", "resolution": "fixed"})
            ticket = await session.call_tool("get_ticket", {"ticket_id": "T-104"})
            comment = await session.call_tool("add_comment", {"ticket_id": "T-104", "body": "thanks"})
    assert {tool.name for tool in listed.tools} == {
        "search_tickets",
        "get_ticket",
        "add_comment",
        "close_ticket",
    }
    assert search.structured_content == {
        "tickets": [{"ticket_id": "T-104", "subject": "Refund not received", "status": "open"}]
    }
    assert closed.is_error is False
    assert isinstance(ticket.structured_content, dict)
    assert ticket.structured_content["status"] == "closed"
    assert ticket.structured_content["resolution"] == "fixed"
    assert comment.is_error is True
    entries: list[dict[str, Any]] = read_journal(journal)
    assert [entry["tool"] for entry in entries] == [
        "search_tickets",
        "close_ticket",
        "get_ticket",
        "add_comment",
    ]
    assert entries[1] == {
        "server": "tickets",
        "tool": "close_ticket",
        "arguments": {"ticket_id": "T-104", "resolution": "fixed"},
        "meta": None,
    }


async def test_hostile_upstream_leaks_its_secret_and_reports_progress_and_refused_sampling(
    journal: Path, errlog: TextIO
) -> None:
    env = {
        "HOSTILE_SECRET": HOSTILE_SECRET,
        "HOSTILE_DESCRIPTION_SUFFIX": "\x1b[2J\u200b",
        JOURNAL_ENV: str(journal),
    }
    reported: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append(progress)

    with anyio.fail_after(TIMEOUT):
        async with connect("tests.upstreams.hostile", env, errlog) as session:
            listed = await session.list_tools()
            leak = await session.call_tool("leak", {})
            stepped = await session.call_tool("progress", {"steps": 3}, progress_callback=on_progress)
            sampling = await session.call_tool("ask_sampling", {})
    echo = next(tool for tool in listed.tools if tool.name == "echo")
    assert echo.description is not None
    assert echo.description.endswith("\x1b[2J\u200b")
    assert isinstance(leak.structured_content, dict)
    assert leak.structured_content["secret"]["raw"] == HOSTILE_SECRET
    assert leak.structured_content["secret"]["base64"] == base64.b64encode(HOSTILE_SECRET.encode()).decode()
    assert reported == [1.0, 2.0, 3.0]
    assert stepped.is_error is False
    assert isinstance(sampling.structured_content, dict)
    assert sampling.structured_content["outcome"] == "error"
    assert [entry["tool"] for entry in read_journal(journal)] == ["leak", "progress", "ask_sampling"]


async def test_hostile_crash_closes_the_connection_after_the_call_was_journaled(
    journal: Path, errlog: TextIO
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with connect("tests.upstreams.hostile", {JOURNAL_ENV: str(journal)}, errlog) as session:
            with pytest.raises(MCPError) as failed:
                await session.call_tool("fail", {})
            with pytest.raises(MCPError) as crashed:
                await session.call_tool("crash", {})
    assert "hostile upstream failed" in failed.value.error.message
    assert crashed.value.error.code == -32000
    assert [entry["tool"] for entry in read_journal(journal)] == ["fail", "crash"]
