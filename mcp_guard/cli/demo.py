"""`mcp-guard demo`: a scripted agent session through the real guard over stdio, against the
bundled example upstreams, then the ledger it left. Uses a fresh ledger in a temporary folder."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import yaml
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client

from mcp_guard.cli.ledger import format_line
from mcp_guard.config import LedgerConfig
from mcp_guard.ledger import open_ledger

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
AGENT = "support-bot"
AGENTS = {"support-bot": {"roles": ["support"]}, "finance-bot": {"roles": ["finance"]}}
FORBID = ["billing.set_payout_destination"]
"""The agents and the hard line of the bundled guard.yaml."""

SCRIPT: list[tuple[str, str, dict[str, Any]]] = [
    ("look up an order", "billing__lookup_order", {"order_id": "ORD-1001"}),
    ("refund within the cap", "billing__refund", {"order_id": "ORD-1001", "amount": 40, "currency": "USD"}),
    (
        "the same refund again (a retry)",
        "billing__refund",
        {"order_id": "ORD-1001", "amount": 40, "currency": "USD"},
    ),
    ("refund over the cap", "billing__refund", {"order_id": "ORD-1001", "amount": 400, "currency": "USD"}),
    (
        "a refund of an order it never looked up",
        "billing__refund",
        {"order_id": "ORD-1003", "amount": 20, "currency": "USD"},
    ),
    ("a tool it was not granted", "billing__set_payout_destination", {"account": "GB33BUKB20201555555555"}),
    (
        "a number sent as a string",
        "billing__refund",
        {"order_id": "ORD-1002", "amount": "40", "currency": "EUR"},
    ),
    (
        "an argument the tool does not have",
        "tickets__close_ticket",
        {"ticket_id": "T-101", "resolution": "fixed", "notify": "all-customers"},
    ),
]


ESCALATION = {"order_id": "ORD-1005", "amount": 75, "currency": "EUR"}
LARGE = {"order_id": "ORD-1004", "amount": 600, "currency": "USD"}
ACTIVATE = [
    "grants",
    "activate",
    AGENT,
    "billing.refund",
    "--for",
    "30m",
    "--reason",
    "customer escalation #4411",
]


def _deployment(folder: Path) -> Path:
    """A guard.yaml with the bundled agents, the bundled manifests (installed with the package, so
    the demo runs from a wheel as from a checkout) and a fresh ledger."""
    manifests = EXAMPLES / "tool_manifests"
    if not manifests.is_dir():
        msg = f"{manifests}: the bundled example manifests are missing from this installation"
        raise SystemExit(msg)
    config = {
        "manifests": str(manifests),
        "ledger": {"path": str(folder / "demo-ledger.db"), "durability": "normal"},
        "agents": AGENTS,
        "forbid": FORBID,
    }
    target = folder / "guard.yaml"
    target.write_text(yaml.safe_dump(config))
    return target


def _say(text: str) -> None:
    print(text, flush=True)


async def _session(config: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_guard", "--config", str(config), "serve", "--agent", AGENT]
    )
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write, message_handler=on_message) as session,
    ):
        await session.initialize()
        tools = (await session.list_tools()).tools
        _say(f"\n{AGENT} connects and is shown {len(tools)} tools:")
        _show_tools(tools)
        for title, name, arguments in SCRIPT:
            await _call(session, title, name, arguments)
        _say("\n> a refund over 50 waits for a person (the guard holds the call, an operator approves)")
        await _call(
            session, "look up the order", "billing__lookup_order", {"order_id": ESCALATION["order_id"]}
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(_call, session, "refund of 75", "billing__refund", ESCALATION)
            await _approve_when_requested(config)
        _say("\n> a larger refund needs a just-in-time activation by an operator")
        await _call(session, "look up the order", "billing__lookup_order", {"order_id": LARGE["order_id"]})
        await _call(session, "refund of 600", "billing__refund", LARGE)
        _say(f"  operator: mcp-guard {' '.join(ACTIVATE[:-1])} '{ACTIVATE[-1]}'")
        await anyio.run_process([sys.executable, "-m", "mcp_guard", "--config", str(config), *ACTIVATE])
        with anyio.fail_after(10):
            await changed.wait()
        _say("  the guard tells the client: notifications/tools/list_changed; the refund tool now says")
        _show_tools([t for t in (await session.list_tools()).tools if t.name == "billing__refund"])
        await _call(session, "refund of 600 again", "billing__refund", LARGE)


def _show_tools(tools: list[types.Tool]) -> None:
    for tool in tools:
        amount = tool.input_schema.get("properties", {}).get("amount")
        limit = f"   amount: {json.dumps(amount)}" if amount else ""
        _say(f"  {tool.name}{limit}")


async def _call(session: ClientSession, title: str, name: str, arguments: dict[str, Any]) -> None:
    _say(f"\n> {title}: {name} {json.dumps(arguments)}")
    try:
        result = await session.call_tool(name, arguments)
    except MCPError as exc:
        _say(f"< JSON-RPC error {exc.error.code}: {exc.error.message}")
        return
    text = " ".join(getattr(block, "text", "") for block in result.content)
    _say(f"< {'isError ' if result.is_error else ''}{text[:200]}")


async def _approve_when_requested(config: Path) -> None:
    """Play the operator: wait for the request to show up, then approve it with the real CLI."""
    command = [sys.executable, "-m", "mcp_guard", "--config", str(config), "approvals"]
    with anyio.fail_after(20):
        while True:
            listed = await anyio.run_process([*command, "list", "--json"])
            lines = listed.stdout.decode().splitlines()
            if lines:
                request = json.loads(lines[0])
                break
            await anyio.sleep(0.2)
    _say(f"  operator: mcp-guard approvals approve {request['id']}   ({request['agent']}, {request['tool']})")
    await anyio.run_process([*command, "approve", request["id"]])


def run_demo() -> int:
    with tempfile.TemporaryDirectory(prefix="mcp-guard-demo-") as tmp:
        config = _deployment(Path(tmp))
        anyio.run(_session, config)
        _say("\nThe ledger (mcp-guard ledger tail):")
        anyio.run(_show_ledger, LedgerConfig(path=Path(tmp) / "demo-ledger.db"))
    return 0


async def _show_ledger(config: LedgerConfig) -> None:
    async with await open_ledger(config) as ledger:
        for inv in await ledger.invocations():
            _say("  " + format_line(inv))
        check = await ledger.verify()
        _say(f"\nledger verify: {'ok' if check.ok else 'BROKEN'}, {check.entries} entries, hash-chained")
