"""The ledger under the real guard: a guard killed mid-call leaves its decision, and a ledger
that cannot be written refuses calls without forwarding them."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Callable

import anyio

from mcp_guard.config import LedgerConfig
from mcp_guard.ledger import open_ledger
from tests.helpers import TIMEOUT, Deployment, guard_command, guard_env, ledger_bytes, ledger_calls, raw_guard

REFUND = {"order_id": "ORD-1001", "amount": 40, "currency": "USD"}


async def _wait_for(predicate: Callable[[], object]) -> None:
    """Poll something another process writes (no event can cross the process boundary)."""
    with anyio.fail_after(TIMEOUT):
        while True:
            if predicate():
                return
            await anyio.sleep(0.05)


async def test_a_guard_killed_during_a_forwarded_call_leaves_the_decision_with_no_outcome(
    deployment: Deployment,
) -> None:
    deployment.with_hostile()
    async with raw_guard(deployment, "qa-bot") as guard:
        await guard.send(
            {
                "jsonrpc": "2.0",
                "id": guard.next_id(),
                "method": "tools/call",
                "params": {"name": "hostile__slow", "arguments": {"seconds": 60}},
            }
        )
        # The upstream journals the call when it starts: the call is in flight upstream.
        await _wait_for(lambda: deployment.journal("hostile"))
        guard.process.send_signal(signal.SIGKILL)
        await guard.process.wait()
    (call,) = ledger_calls(deployment.ledger_path)
    assert (call["tool"], call["decision"], call["outcome"]) == ("slow", "allow", None)
    async with await open_ledger(LedgerConfig(path=deployment.ledger_path), readonly=True) as ledger:
        assert (await ledger.verify()).ok


async def test_a_locked_ledger_refuses_the_call_and_forwards_nothing(deployment: Deployment) -> None:
    deployment.with_billing()
    async with raw_guard(deployment, "support-bot") as guard:
        ok = await guard.request("tools/call", {"name": "billing__refund", "arguments": REFUND})
        assert ok["result"]["isError"] is False
        lock = sqlite3.connect(deployment.ledger_path, timeout=TIMEOUT)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            refused = await guard.request("tools/call", {"name": "billing__refund", "arguments": REFUND})
        finally:
            lock.rollback()
            lock.close()
        assert refused["result"]["isError"] is True
        assert refused["result"]["content"][0]["text"].startswith("denied (ledger_unavailable):")
        again = await guard.request(
            "tools/call", {"name": "billing__lookup_order", "arguments": {"order_id": "ORD-1001"}}
        )
        assert again["result"]["isError"] is False
    forwarded = [line["tool"] for line in deployment.journal("billing")]
    assert forwarded == ["refund", "lookup_order"]
    assert [(c["tool"], c["decision"]) for c in ledger_calls(deployment.ledger_path)] == [
        ("refund", "allow"),
        ("lookup_order", "allow"),
    ]
    assert "ledger" in deployment.stderr()


async def test_a_ledger_that_cannot_be_created_stops_the_guard_with_a_clear_error(
    deployment: Deployment,
) -> None:
    deployment.with_billing()
    deployment.extra_config["ledger"] = {"path": "no-such-folder/ledger.db"}
    deployment.write()
    result = await anyio.run_process(
        guard_command(deployment, "support-bot"), env=guard_env(), cwd=deployment.root, check=False
    )
    assert result.returncode != 0
    err = result.stderr.decode()
    assert "no-such-folder" in err
    assert "Traceback" not in err
    assert deployment.journal("billing") == []


async def test_refused_calls_of_several_mib_over_stdio_leave_the_ledger_file_small(
    deployment: Deployment,
) -> None:
    deployment.with_billing()
    calls = [
        ("billing__lookup_order", {"order_id": "x" * 3 * 1024 * 1024}),  # under max_message_bytes
        (
            "billing__refund",
            {"order_id": "ORD-1001", "amount": 40, "currency": "USD", "n": "y" * 2 * 1024 * 1024},
        ),
        ("billing__no_such_tool", {"blob": "z" * 3 * 1024 * 1024}),
    ] * 2
    async with raw_guard(deployment, "support-bot") as guard:
        for name, arguments in calls:
            answer = await guard.request("tools/call", {"name": name, "arguments": arguments})
            refused = answer.get("error") or answer["result"]
            assert refused.get("isError", True), answer
    assert deployment.journal("billing") == []
    rows = ledger_calls(deployment.ledger_path)
    assert [(r["decision"], r["reason"]) for r in rows] == [
        ("deny", "invalid_arguments"),
        ("deny", "invalid_arguments"),
        ("deny", "unknown_tool"),
    ] * 2
    assert all(r["arguments"]["$truncated"]["bytes"] > 2 * 1024 * 1024 for r in rows)
    assert len(ledger_bytes(deployment.ledger_path)) < 512 * 1024  # whole, they would be 16 MiB
    async with await open_ledger(LedgerConfig(path=deployment.ledger_path), readonly=True) as ledger:
        assert (await ledger.verify()).ok
