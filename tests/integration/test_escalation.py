"""Escalation across calls through the guard's own Server, driven in-process by real ClientSessions
(several sessions of one agent where it matters), the example upstreams in memory and a real SQLite
ledger file: prerequisites, flow marks, just-in-time activations (with the real `grants` command
functions) and lockout. Every refusal also proves the upstream never saw the call (its journal)
and the ledger recorded it."""

from __future__ import annotations

import argparse
import io
import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession, MCPError

from mcp_guard.cli.grants import run_agents, run_grants
from mcp_guard.cli.ledger import run_ledger
from mcp_guard.errors import UsageError
from mcp_guard.guard.app import Guard, open_guard
from mcp_guard.guard.caller import Caller
from mcp_guard.ledger import ActivationEvent, open_ledger
from mcp_guard.ledger.entries import format_ts
from tests.helpers import (
    BILLING_TOOLS,
    TICKETS_TOOLS,
    TIMEOUT,
    Deployment,
    _connect,
    assert_denied,
    ledger_events,
    memory_transports,
    text_of,
)

LOOKUP = {"allow": ["role:support"], "marks": ["customer-data"]}
REQUIRES = [{"tool": "lookup_order", "match": {"order_id": "order_id"}, "within": "15m"}]
NOTIFIED = 2.0  # seconds within which an activation, revocation, expiry or lockout reaches clients


def refund_grants(**support: Any) -> list[dict[str, Any]]:
    return [
        {
            "allow": ["role:support"],
            "arguments": {"amount": {"exclusiveMinimum": 0, "maximum": 100}},
            **support,
        },
        *BILLING_TOOLS["refund"][1:],
    ]


class Notices:
    """A session's notifications/tools/list_changed, counted."""

    def __init__(self) -> None:
        self.count = 0

    async def on_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.count += 1

    async def after(self, seen: int, within: float = NOTIFIED) -> int:
        """Wait until a notice beyond the first `seen` arrives; the count then."""
        with anyio.fail_after(within):
            while self.count <= seen:  # noqa: ASYNC110 - a count, not one event
                await anyio.sleep(0.02)
        return self.count


@asynccontextmanager
async def sessions(
    deployment: Deployment, *callers: str
) -> AsyncIterator[tuple[Guard, list[ClientSession], list[Notices]]]:
    """One guard; a ClientSession per name in `callers` (the same name twice: two sessions of one
    agent), and the list_changed notices each gets."""
    config, manifests = deployment.load()
    transports = memory_transports(manifests)
    async with (
        open_guard(config, manifests, tuple(set(callers)), transports) as guard,
        AsyncExitStack() as stack,
    ):
        opened, notices = [], []
        for name in callers:
            notices.append(Notices())
            handler = {"message_handler": notices[-1].on_message}
            opened.append(await stack.enter_async_context(_connect(Caller(guard, name), handler)))
        yield guard, opened, notices


async def call(session: ClientSession, name: str, arguments: dict[str, Any]) -> Any:
    with anyio.fail_after(TIMEOUT):
        return await session.call_tool(name, arguments)


async def lookup(session: ClientSession, order: str = "ORD-1004") -> Any:
    return await call(session, "billing__lookup_order", {"order_id": order})


async def refund(session: ClientSession, amount: Any = 40, order: str = "ORD-1004") -> Any:
    return await call(session, "billing__refund", {"order_id": order, "amount": amount, "currency": "USD"})


def assert_ok(result: Any) -> None:
    assert result.is_error is not True, text_of(result)


def forwarded(deployment: Deployment, tool: str) -> list[dict[str, Any]]:
    return [e["arguments"] for e in deployment.journal("billing") if e["tool"] == tool]


def decisions(deployment: Deployment) -> list[tuple[str, str, str | None]]:
    return [(c["tool"], c["decision"], c["reason"]) for c in deployment.ledger()]


# -- requires -------------------------------------------------------------------------------------


async def test_a_refund_needs_an_ok_lookup_of_the_same_order_in_the_same_session(
    deployment: Deployment,
) -> None:
    deployment.with_billing({**BILLING_TOOLS, "refund": refund_grants(requires=REQUIRES)})
    async with sessions(deployment, "support-bot", "support-bot") as (_, (first, second), _):
        missing = await refund(first)
        assert_denied(missing, "prerequisite_missing")
        assert text_of(missing) == (
            "denied (prerequisite_missing): call billing__lookup_order with the same order_id first (within 15m)"
        )
        assert_ok(await lookup(first, "ORD-1002"))  # another order does not count
        assert_denied(await refund(first), "prerequisite_missing")
        assert (await lookup(first, "ORD-9999")).is_error  # the upstream's error: outcome error
        assert_denied(await refund(first, order="ORD-9999"), "prerequisite_missing")
        assert_ok(await lookup(first))
        assert_denied(await refund(second), "prerequisite_missing")  # another session's lookup
        assert_ok(await refund(first))
    assert forwarded(deployment, "refund") == [{"order_id": "ORD-1004", "amount": 40, "currency": "USD"}]
    assert decisions(deployment) == [
        ("refund", "deny", "prerequisite_missing"),
        ("lookup_order", "allow", None),
        ("refund", "deny", "prerequisite_missing"),
        ("lookup_order", "allow", None),
        ("refund", "deny", "prerequisite_missing"),
        ("lookup_order", "allow", None),
        ("refund", "deny", "prerequisite_missing"),
        ("refund", "allow", None),
    ]


async def test_a_prerequisite_older_than_within_no_longer_counts(deployment: Deployment) -> None:
    requires = [{"tool": "lookup_order", "match": {"order_id": "order_id"}, "within": "1s"}]
    deployment.with_billing({**BILLING_TOOLS, "refund": refund_grants(requires=requires)})
    async with sessions(deployment, "support-bot") as (_, (session,), _):
        assert_ok(await lookup(session))
        await anyio.sleep(1.1)
        assert_denied(await refund(session), "prerequisite_missing")
    assert forwarded(deployment, "refund") == []


# -- marks and blocked_after ----------------------------------------------------------------------


async def test_a_session_that_read_customer_data_cannot_post_a_comment_while_another_session_can(
    deployment: Deployment,
) -> None:
    deployment.with_billing({**BILLING_TOOLS, "lookup_order": LOOKUP})
    blocked = {**TICKETS_TOOLS["add_comment"], "blocked_after": {"marks": ["customer-data"], "within": "1h"}}
    deployment.with_tickets({**TICKETS_TOOLS, "add_comment": blocked})
    comment = {"ticket_id": "T-101", "body": "ORD-1004 belongs to dave@example.com"}
    async with sessions(deployment, "support-bot", "support-bot") as (_, (first, second), _):
        tools = {t.name: t for t in (await first.list_tools()).tools}
        assert tools["tickets__add_comment"].description.endswith(
            " Refused for 1h after a call in this session that sets the mark customer-data."
        )
        assert_ok(await call(first, "tickets__add_comment", {"ticket_id": "T-101", "body": "looking"}))
        assert_ok(await lookup(first))
        refused = await call(first, "tickets__add_comment", comment)
        assert_denied(refused, "flow_blocked")
        assert "carries the mark 'customer-data', set by billing__lookup_order at 20" in text_of(refused)
        assert "this tool is refused until 20" in text_of(refused)
        assert_ok(await call(second, "tickets__add_comment", {"ticket_id": "T-101", "body": "other session"}))
    posted = [e["arguments"]["body"] for e in deployment.journal("tickets") if e["tool"] == "add_comment"]
    assert posted == ["looking", "other session"]
    marks = ledger_events(deployment.ledger_path, "mark")
    assert [(m["server"], m["tool"], m["marks"]) for m in marks] == [
        ("billing", "lookup_order", ["customer-data"])
    ]
    assert ("add_comment", "deny", "flow_blocked") in decisions(deployment)


# -- activation -----------------------------------------------------------------------------------

ACTIVATED = {
    "allow": ["role:support"],
    "activation": {"max": "2h"},
    "arguments": {"amount": {"exclusiveMinimum": 0, "maximum": 1000}},
}


def grants_args(command: str, *rest: str, **options: Any) -> argparse.Namespace:
    if command == "activate":
        return argparse.Namespace(grants_command=command, agent=rest[0], tool=rest[1], **options)
    if command == "revoke":
        return argparse.Namespace(grants_command=command, agent=rest[0], tool=rest[1])
    return argparse.Namespace(grants_command=command, json=True)


def cap(tools: Sequence[Any]) -> Any:
    return next(t for t in tools if t.name == "billing__refund").input_schema["properties"]["amount"][
        "maximum"
    ]


async def test_an_activation_puts_the_larger_grant_in_force_until_it_is_revoked(
    deployment: Deployment,
) -> None:
    deployment.with_billing({**BILLING_TOOLS, "refund": [ACTIVATED, *refund_grants()]})
    config, manifests = deployment.load()
    async with sessions(deployment, "support-bot", "finance-bot") as (_, (support, finance), (notices, _)):
        assert cap((await support.list_tools()).tools) == 100
        assert_denied(await refund(support, 600), "limit_exceeded")
        out = io.StringIO()
        activate = grants_args(
            "activate", "support-bot", "billing.refund", duration="30m", reason="ticket #4411"
        )
        assert await anyio.to_thread.run_sync(run_grants, activate, config, manifests, out) == 0
        seen = await notices.after(0)
        assert cap((await support.list_tools()).tools) == 1000
        assert_ok(await refund(support, 600))
        listed = io.StringIO()
        assert await anyio.to_thread.run_sync(run_grants, grants_args("list"), config, manifests, listed) == 0
        assert '"agent": "support-bot", "server": "billing", "tool": "refund"' in listed.getvalue()
        assert '"reason": "ticket #4411"' in listed.getvalue()
        assert_denied(await refund(finance, 6000), "limit_exceeded")  # finance's own grant is untouched

        revoke = grants_args("revoke", "support-bot", "billing.refund")
        assert await anyio.to_thread.run_sync(run_grants, revoke, config, manifests, io.StringIO()) == 0
        await notices.after(seen)
        assert cap((await support.list_tools()).tools) == 100
        assert_denied(await refund(support, 601), "limit_exceeded")
    assert forwarded(deployment, "refund") == [{"order_id": "ORD-1004", "amount": 600, "currency": "USD"}]
    actions = [(e["action"], e.get("reason")) for e in ledger_events(deployment.ledger_path, "activation")]
    assert actions == [("activate", "ticket #4411"), ("revoke", None)]


async def test_an_activation_that_expires_reaches_clients_and_calls_at_once(deployment: Deployment) -> None:
    deployment.with_billing({**BILLING_TOOLS, "refund": [ACTIVATED, *refund_grants()]})
    config, manifests = deployment.load()
    async with sessions(deployment, "support-bot") as (_, (support,), (notices,)):
        assert cap((await support.list_tools()).tools) == 100
        activate = grants_args(
            "activate", "support-bot", "billing.refund", duration="1s", reason="a short one"
        )
        assert await anyio.to_thread.run_sync(run_grants, activate, config, manifests, io.StringIO()) == 0
        seen = await notices.after(0)
        assert cap((await support.list_tools()).tools) == 1000
        await notices.after(seen, 1 + NOTIFIED)  # the expiry
        assert cap((await support.list_tools()).tools) == 100
    assert forwarded(deployment, "refund") == []


async def test_a_call_decided_under_an_activation_that_ended_meanwhile_is_decided_again(
    deployment: Deployment,
) -> None:
    deployment.with_billing({**BILLING_TOOLS, "refund": [ACTIVATED, *refund_grants()]})
    config, _ = deployment.load()
    async with sessions(deployment, "support-bot") as (guard, (support,), _):
        async with await open_ledger(config.ledger) as ledger:
            until = format_ts(datetime.now(UTC) + timedelta(minutes=5))
            payload = {"action": "activate", "until": until, "reason": "r", "by": "op"}
            await ledger.append(
                ActivationEvent(payload=payload, agent="support-bot", server="billing", tool="refund")
            )
            await guard.refresh_standing()
            assert cap((await support.list_tools()).tools) == 1000
            # Revoked by another process; this guard has not read it yet when the call comes.
            revoke = {"action": "revoke", "by": "op"}
            await ledger.append(
                ActivationEvent(payload=revoke, agent="support-bot", server="billing", tool="refund")
            )
        assert_denied(await refund(support, 600), "limit_exceeded")  # the standing grant decided it
    assert forwarded(deployment, "refund") == []


async def test_grants_activate_refuses_what_it_cannot_do_and_writes_nothing(deployment: Deployment) -> None:
    deployment.with_billing({**BILLING_TOOLS, "refund": [ACTIVATED, *refund_grants()]})
    config, manifests = deployment.load()
    cases = [
        ("support-bot", "billing.refund", "3h", "r", "over the grant's activation.max (2h)"),
        ("support-bot", "billing.refund", "30m", "   ", "--reason must be printable text, not blank"),
        ("support-bot", "billing.refund", "30m", "a\x1b[2Jb", "--reason must be printable text"),
        ("support-bot", "billing.refund", "30m", "x" * 501, "longer than 500 characters"),
        ("support-bot", "billing.refund", "soon", "r", "is not a duration"),
        (
            "support-bot",
            "billing.lookup_order",
            "30m",
            "r",
            "no grant of billing.lookup_order for support-bot",
        ),
        ("finance-bot", "billing.refund", "30m", "r", "no grant of billing.refund for finance-bot"),
        ("support-bot", "refund", "30m", "r", "is not SERVER.TOOL"),
        ("support-bot", "nowhere.refund", "30m", "r", "is not SERVER.TOOL"),
    ]
    for agent, tool, duration, reason, says in cases:
        args = grants_args("activate", agent, tool, duration=duration, reason=reason)
        with pytest.raises(
            UsageError, match=says.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
        ):
            run_grants(args, config, manifests, io.StringIO())
    assert not deployment.ledger_path.exists() or ledger_events(deployment.ledger_path, "activation") == []


# -- lockout --------------------------------------------------------------------------------------


async def test_an_agent_refused_again_and_again_is_locked_out_until_an_operator_unlocks_it(
    deployment: Deployment,
) -> None:
    deployment.with_examples()
    deployment.extra_config["lockout"] = {"denials": 3, "within": "5m", "for": "15m"}
    config, _ = deployment.load()
    async with sessions(deployment, "support-bot", "finance-bot") as (_, (support, finance), (notices, _)):
        assert_denied(await refund(support, 400), "limit_exceeded")
        with anyio.fail_after(TIMEOUT), pytest.raises(MCPError, match="Unknown tool"):
            await support.call_tool("billing__set_payout_destination", {})
        assert_denied(await refund(support, "40"), "invalid_arguments")  # the third: locked out now
        seen = await notices.after(0)
        assert (await support.list_tools()).tools == []
        locked = await refund(support, 40)
        assert_denied(locked, "locked_out")
        assert "locked out after repeated refusals until 20" in text_of(locked)
        with anyio.fail_after(TIMEOUT):
            unknown = await support.call_tool("no_such_tool", {})  # no -32602 while locked out
        assert_denied(unknown, "locked_out")
        assert_ok(await refund(finance, 40))  # another agent is untouched

        out = io.StringIO()
        assert (
            await anyio.to_thread.run_sync(run_agents, argparse.Namespace(name="support-bot"), config, out)
            == 0
        )
        assert out.getvalue().startswith("unlocked: support-bot (was locked out until 20")
        await notices.after(seen)
        assert_ok(await refund(support, 40))
        assert_denied(await refund(support, 400), "limit_exceeded")  # the count started afresh
        assert_ok(await lookup(support))
    assert len(ledger_events(deployment.ledger_path, "lockout")) == 1
    assert [e["by"] for e in ledger_events(deployment.ledger_path, "unlock")] != []
    assert forwarded(deployment, "refund") == [
        {"order_id": "ORD-1004", "amount": 40, "currency": "USD"},
        {"order_id": "ORD-1004", "amount": 40, "currency": "USD"},
    ]
    reasons = [r for _, _, r in decisions(deployment)]
    assert reasons.count("locked_out") == 2
    unlock = argparse.Namespace(name="support-bot")
    assert await anyio.to_thread.run_sync(run_agents, unlock, config, io.StringIO()) == 1  # not locked
    events = argparse.Namespace(ledger_command="events", kind=["lockout", "unlock"], n=10, json=True)
    out = io.StringIO()
    assert await anyio.to_thread.run_sync(run_ledger, events, config.ledger, out) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["kind"], r["agent"]) for r in rows] == [("lockout", "support-bot"), ("unlock", "support-bot")]
    assert rows[0]["payload"]["denials"] == 3
    assert rows[1]["payload"]["by"]
    text = io.StringIO()
    every = argparse.Namespace(ledger_command="events", kind=None, n=1, json=False)
    assert await anyio.to_thread.run_sync(run_ledger, every, config.ledger, text) == 0
    assert " unlock support-bot - " in text.getvalue()


async def test_refusals_that_are_not_the_agents_doing_never_lock_it_out(deployment: Deployment) -> None:
    approval = {"approval": {"wait": "1s"}}
    deployment.with_billing({**BILLING_TOOLS, "refund": refund_grants(**approval)})
    deployment.extra_config["lockout"] = {"denials": 2, "within": "5m", "for": "15m"}
    async with sessions(deployment, "support-bot") as (_, (support,), _):
        for amount in (10, 11, 12):
            assert_denied(await refund(support, amount), "approval_pending")
        assert_ok(await lookup(support))
    assert not _lockouts(deployment)


def _lockouts(deployment: Deployment) -> list[Any]:
    conn = sqlite3.connect(deployment.ledger_path)
    try:
        return conn.execute("SELECT payload FROM entries WHERE kind = 'lockout'").fetchall()
    finally:
        conn.close()


# -- what the operator sees -----------------------------------------------------------------------


async def test_tools_shows_each_rule_the_lockout_the_activations_and_the_marks_carried(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    from mcp_guard.cli.preview import load_preview, print_tools
    from mcp_guard.policy.engine import Agent

    deployment.with_billing(
        {**BILLING_TOOLS, "lookup_order": LOOKUP, "refund": [ACTIVATED, *refund_grants(requires=REQUIRES)]}
    )
    blocked = {**TICKETS_TOOLS["add_comment"], "blocked_after": {"marks": ["customer-data"], "within": "1h"}}
    deployment.with_tickets({**TICKETS_TOOLS, "add_comment": blocked})
    config, manifests = deployment.load()
    agent = Agent("support-bot", frozenset({"support"}))
    async with sessions(deployment, "support-bot") as (_, (session,), _):
        assert_ok(await lookup(session))  # marks its session customer-data
    preview = await anyio.to_thread.run_sync(load_preview, config, manifests, agent)
    await anyio.to_thread.run_sync(print_tools, preview, config, False)
    shown = capsys.readouterr().out
    assert "(mark customer-data carried: set by billing__lookup_order at 20" in shown
    assert "  requires: call billing__lookup_order with the same order_id first (within 15m)" in shown
    assert (
        "  activation: another grant applies while activated (up to 2h): grants activate support-bot billing.refund"
        in shown
    )
    assert "  marks: sets customer-data on the session" in shown
    assert "  blocked_after: customer-data within 1h; blocked now by customer-data until 20" in shown

    activate = grants_args("activate", "support-bot", "billing.refund", duration="30m", reason="ticket 9")
    assert await anyio.to_thread.run_sync(run_grants, activate, config, manifests, io.StringIO()) == 0
    preview = await anyio.to_thread.run_sync(load_preview, config, manifests, agent)
    await anyio.to_thread.run_sync(print_tools, preview, config, True)
    rows = {row["name"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["billing__refund"]["activation"]["max"] == "2h"
    assert rows["billing__refund"]["activation"]["until"].startswith("20")
    assert rows["billing__refund"]["inputSchema"]["properties"]["amount"]["maximum"] == 1000
    assert rows["tickets__add_comment"]["blocked_now"][0]["by"] == "billing__lookup_order"
    assert rows["billing__lookup_order"]["marks"] == ["customer-data"]
