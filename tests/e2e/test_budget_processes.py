"""Budgets and escalation rules across real `mcp-guard serve` processes sharing one SQLite ledger
file: one after the other, and several at once racing for the last of a budget, for the one refund
that `unique` allows (with and without `requires`), and into a lockout. The billing journal proves
what was forwarded; the ledger file what was decided; `mcp-guard ledger verify` that the chain
held."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

from tests.helpers import (
    BILLING_TOOLS,
    TIMEOUT,
    Deployment,
    assert_denied,
    cli,
    guard_command,
    guard_env,
    stdio_guard,
    text_of,
)

PROCESSES = 4
CALLS_EACH = 6
AMOUNT = 10
WORTH = 10  # the budget holds this many calls of AMOUNT


def billing(deployment: Deployment, refund_budgets: list[dict[str, Any]], **tools: Any) -> Deployment:
    refund = [
        {
            "allow": ["role:support"],
            "arguments": {"amount": {"exclusiveMinimum": 0, "maximum": 100}},
            "budgets": refund_budgets,
        },
    ]
    return deployment.with_billing({**BILLING_TOOLS, "refund": refund, **tools})


async def refund(session: ClientSession, amount: Any) -> Any:
    with anyio.fail_after(TIMEOUT):
        return await session.call_tool(
            "billing__refund", {"order_id": "ORD-1004", "amount": amount, "currency": "USD"}
        )


async def lookup(session: ClientSession) -> Any:
    with anyio.fail_after(TIMEOUT):
        return await session.call_tool("billing__lookup_order", {"order_id": "ORD-1004"})


def assert_ok(result: Any) -> None:
    assert result.is_error is not True, text_of(result)


def refunds(deployment: Deployment) -> list[Any]:
    return [e["arguments"]["amount"] for e in deployment.journal("billing") if e["tool"] == "refund"]


async def test_budgets_span_guard_processes_while_a_session_budget_starts_afresh_with_each_connection(
    deployment: Deployment,
) -> None:
    once_a_session = {"allow": ["role:support"], "budgets": [{"max": 1, "per": "1h", "by": ["session"]}]}
    billing(deployment, [{"sum": "amount", "max": 100, "per": "1d"}], lookup_order=once_a_session)
    async with stdio_guard(deployment, "support-bot") as first:
        assert_ok(await refund(first, 60))
        assert_ok(await lookup(first))
        assert_denied(await lookup(first), "budget_exhausted")
    async with stdio_guard(deployment, "support-bot") as second:  # a new process, the same ledger
        over = await refund(second, 60)
        assert_denied(over, "budget_exhausted")
        assert "40 of 100 left" in text_of(over)
        assert_ok(await refund(second, 40))
        assert_denied(await refund(second, 0.01), "budget_exhausted")
        assert_ok(await lookup(second))  # a new connection is a new session
    assert refunds(deployment) == [60, 40]
    assert len([e for e in deployment.journal("billing") if e["tool"] == "lookup_order"]) == 2
    calls = deployment.ledger()
    assert [(c["tool"], c["decision"]) for c in calls] == [
        ("refund", "allow"),
        ("lookup_order", "allow"),
        ("lookup_order", "deny"),
        ("refund", "deny"),
        ("refund", "allow"),
        ("refund", "deny"),
        ("lookup_order", "allow"),
    ]
    assert len({c["session"] for c in calls}) == 2


@asynccontextmanager
async def started_guard(deployment: Deployment, agent: str) -> AsyncIterator[ClientSession]:
    """Like `stdio_guard`, but without rewriting the deployment's files, which other guards are
    reading as they start at the same time."""
    command = guard_command(deployment, agent)
    params = StdioServerParameters(
        command=command[0], args=command[1:], env=guard_env(), cwd=str(deployment.root)
    )
    with deployment.stderr_path.open("a", encoding="utf-8") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write, read_timeout_seconds=TIMEOUT) as session,
        ):
            with anyio.fail_after(TIMEOUT):
                await session.initialize()
            yield session


async def test_four_guard_processes_making_six_concurrent_calls_each_forward_exactly_the_budget(
    deployment: Deployment,
) -> None:
    billing(deployment, [{"sum": "amount", "max": AMOUNT * WORTH, "per": "1d"}])
    results = await race(deployment, PROCESSES, CALLS_EACH)

    allowed = [r for r in results if r.is_error is not True]
    refused = [r for r in results if r.is_error is True]
    assert len(results) == PROCESSES * CALLS_EACH
    assert len(allowed) == WORTH, [text_of(r) for r in refused]
    for result in refused:
        assert_denied(result, "budget_exhausted")
    assert refunds(deployment) == [AMOUNT] * WORTH
    calls = deployment.ledger()
    assert len(calls) == PROCESSES * CALLS_EACH
    assert len({c["call_id"] for c in calls}) == PROCESSES * CALLS_EACH
    assert sorted((c["decision"], c["reason"], c["outcome"]) for c in calls) == sorted(
        [("allow", None, "ok")] * WORTH
        + [("deny", "budget_exhausted", None)] * (PROCESSES * CALLS_EACH - WORTH)
    )
    assert len({c["session"] for c in calls}) == PROCESSES
    verify = await cli("--config", str(deployment.config_path), "ledger", "verify")
    assert verify.returncode == 0, verify.stderr


async def race(deployment: Deployment, processes: int, calls_each: int, amount: Any = AMOUNT) -> list[Any]:
    """`processes` guard processes on one ledger, each making `calls_each` identical refunds (of
    `amount`) at once, once every process is up; the results, in the order they came back."""
    deployment.write()
    results: list[Any] = []
    ready = 0
    go = anyio.Event()

    async def guard_process() -> None:
        nonlocal ready
        async with started_guard(deployment, "support-bot") as session:
            ready += 1
            if ready == processes:
                go.set()
            with anyio.fail_after(TIMEOUT):
                await go.wait()  # every process is up before any call is made
            async with anyio.create_task_group() as calls:
                for _ in range(calls_each):
                    calls.start_soon(lambda: _append(results, refund(session, amount)))

    async with anyio.create_task_group() as tg:
        for _ in range(processes):
            tg.start_soon(guard_process)
    return results


async def _append(into: list[Any], pending: Any) -> None:
    into.append(await pending)


async def test_three_guard_processes_racing_with_identical_refunds_forward_exactly_one(
    deployment: Deployment,
) -> None:
    refund_grant = [
        {
            "allow": ["role:support"],
            "arguments": {"amount": {"exclusiveMinimum": 0, "maximum": 100}},
            "unique": {"by": ["arg:order_id", "arg:amount"], "per": "1d"},
        }
    ]
    deployment.with_billing({**BILLING_TOOLS, "refund": refund_grant})
    processes, calls_each = 3, 3
    results = await race(deployment, processes, calls_each)

    assert len(results) == processes * calls_each
    allowed = [r for r in results if r.is_error is not True]
    assert len(allowed) == 1, [text_of(r) for r in results]
    for result in results:
        if result.is_error is True:
            assert_denied(result, "duplicate_call")
    assert refunds(deployment) == [AMOUNT]  # a retry from any process never reached the upstream
    calls = deployment.ledger()
    assert sorted((c["decision"], c["reason"]) for c in calls) == sorted(
        [("allow", None)] + [("deny", "duplicate_call")] * (processes * calls_each - 1)
    )
    assert len({c["session"] for c in calls}) == processes


async def test_three_guard_processes_each_refund_only_an_order_their_own_session_looked_up_and_only_once(
    deployment: Deployment,
) -> None:
    refund_grant = [
        {
            "allow": ["role:support"],
            "arguments": {"amount": {"exclusiveMinimum": 0, "maximum": 100}},
            "requires": [{"tool": "lookup_order", "match": {"order_id": "order_id"}, "within": "15m"}],
            "unique": {"by": ["arg:order_id", "arg:amount"], "per": "1d"},
        }
    ]
    deployment.with_billing({**BILLING_TOOLS, "refund": refund_grant})
    deployment.write()
    results: dict[str, list[Any]] = {"looked": [], "not": []}
    ready, go = 0, anyio.Event()

    async def guard_process(looks_up: bool) -> None:
        nonlocal ready
        async with started_guard(deployment, "support-bot") as session:
            if looks_up:
                assert_ok(await lookup(session))
            ready += 1
            if ready == 3:
                go.set()
            with anyio.fail_after(TIMEOUT):
                await go.wait()  # every process is up (and two have looked the order up)
            async with anyio.create_task_group() as calls:
                for _ in range(3):
                    into = results["looked" if looks_up else "not"]
                    calls.start_soon(lambda into=into: _append(into, refund(session, AMOUNT)))

    async with anyio.create_task_group() as tg:
        for looks_up in (True, True, False):
            tg.start_soon(guard_process, looks_up)

    for result in results["not"]:  # its own session never looked the order up: others' lookups do not count
        assert_denied(result, "prerequisite_missing")
    allowed = [r for r in results["looked"] if r.is_error is not True]
    assert len(allowed) == 1, [text_of(r) for r in results["looked"]]
    for result in results["looked"]:
        if result.is_error is True:
            assert_denied(result, "duplicate_call")
    assert refunds(deployment) == [AMOUNT]
    calls = [c for c in deployment.ledger() if c["tool"] == "refund"]
    assert sorted((c["decision"], c["reason"]) for c in calls) == sorted(
        [("allow", None)] + [("deny", "duplicate_call")] * 5 + [("deny", "prerequisite_missing")] * 3
    )


async def test_guard_processes_refused_at_once_write_exactly_one_lockout_and_then_refuse_everything(
    deployment: Deployment,
) -> None:
    deployment.with_billing()
    deployment.extra_config["lockout"] = {"denials": 4, "within": "5m", "for": "15m"}
    processes, calls_each = 3, 3
    results = await race(deployment, processes, calls_each, amount=AMOUNT * 100)  # over the cap

    reasons = sorted(text_of(r).split(")")[0] for r in results)
    assert reasons.count("denied (limit_exceeded") == 4, reasons
    assert reasons.count("denied (locked_out") == processes * calls_each - 4, reasons
    async with started_guard(deployment, "support-bot") as session:
        assert_denied(await refund(session, AMOUNT), "locked_out")  # a valid call, from a new process
    assert refunds(deployment) == []
    conn = sqlite3.connect(deployment.ledger_path)
    try:
        (lockouts,) = conn.execute("SELECT count(*) FROM entries WHERE kind = 'lockout'").fetchone()
    finally:
        conn.close()
    assert lockouts == 1
    calls = deployment.ledger()
    assert len(calls) == processes * calls_each + 1
