"""Fleet mode end to end: three `mcp-guard serve --http` replicas on one PostgreSQL ledger, with
concurrent clients on each. Across the replicas a budget is never overspent, an approval is used
once, a `unique` rule lets one call through, and `mcp-guard ledger verify` says the one chain held.
The billing journal proves what was forwarded; the ledger what was decided."""

from __future__ import annotations

import io
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, redirect_stdout
from typing import Any

import anyio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from mcp_guard.cli.main import main
from mcp_guard.identity.keys import hash_key, new_key
from tests.helpers import (
    BILLING_TOOLS,
    Deployment,
    assert_denied,
    drain_serving,
    free_port,
    guard_env,
    text_of,
    wait_for_port,
)

TIMEOUT = 60.0
REPLICAS = 3
BUDGET = 5  # lookups a day, across the fleet


@contextmanager
def replicas(deployment: Deployment, count: int) -> Iterator[list[str]]:
    """`count` guard processes serving Streamable HTTP on one ledger; their /mcp URLs."""
    deployment.write()
    started = []
    try:
        for _ in range(count):
            port = free_port()
            process = subprocess.Popen(
                [sys.executable, "-m", "mcp_guard", "--config", str(deployment.config_path), "serve",
                 "--http", f"127.0.0.1:{port}"],
                cwd=deployment.root, env=guard_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
            )  # fmt: skip
            lines: list[str] = []
            ready: queue.Queue[str] = queue.Queue()
            threading.Thread(target=drain_serving, args=(process.stderr, lines, ready), daemon=True).start()
            started.append((process, port, lines, ready))
        for _, port, lines, ready in started:
            assert ready.get(timeout=TIMEOUT), f"a replica exited before serving: {''.join(lines)}"
            wait_for_port(port, time.monotonic() + TIMEOUT)
        yield [f"http://127.0.0.1:{port}/mcp" for _, port, _, _ in started]
    finally:
        for process, *_ in started:
            process.send_signal(signal.SIGTERM)
        for process, _, lines, _ in started:
            try:
                assert process.wait(timeout=TIMEOUT) == 0, "".join(lines)
            finally:
                process.kill()
                process.wait()
                assert process.stderr is not None
                process.stderr.close()


@asynccontextmanager
async def connect(url: str, key: str) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT) as http,
        streamable_http_client(url, http_client=http) as (read, write, *_),
        ClientSession(read, write, read_timeout_seconds=TIMEOUT) as session,
    ):
        with anyio.fail_after(TIMEOUT):
            await session.initialize()
        yield session


async def at_once(
    sessions: list[ClientSession], tool: str, arguments: dict[str, Any], each: int
) -> list[Any]:
    """`each` identical calls on every session, all at once; the results."""
    results: list[Any] = []

    async def one(session: ClientSession) -> None:
        with anyio.fail_after(TIMEOUT):
            results.append(await session.call_tool(tool, arguments))

    async with anyio.create_task_group() as tg:
        for session in sessions:
            for _ in range(each):
                tg.start_soon(one, session)
    return results


def forwarded(deployment: Deployment, tool: str) -> list[dict[str, Any]]:
    return [e["arguments"] for e in deployment.journal("billing") if e["tool"] == tool]


async def cli(deployment: Deployment, *args: str) -> str:
    """An operator's `mcp-guard` command, run in this process (a worker thread) to spare a start."""
    out = io.StringIO()

    def run() -> int:
        with redirect_stdout(out):
            return main(["--config", str(deployment.config_path), *args])

    with anyio.fail_after(TIMEOUT):
        code = await anyio.to_thread.run_sync(run)
    assert code == 0, out.getvalue()
    return out.getvalue()


async def test_three_replicas_on_one_postgresql_ledger_share_budgets_approvals_and_unique_calls(
    deployment: Deployment, postgres_url: str
) -> None:
    key = new_key()
    refund = [
        {
            "allow": ["role:support"],
            "arguments": {"amount": {"exclusiveMinimum": 0, "maximum": 100}},
            "unique": {"by": ["arg:order_id", "arg:amount"], "per": "1d"},
            "approval": {"when": {"amount": {"exclusiveMinimum": 50}}, "wait": "1s"},
        }
    ]
    lookup = {"allow": ["role:support"], "budgets": [{"max": BUDGET, "per": "1d"}]}
    deployment.with_billing({**BILLING_TOOLS, "refund": refund, "lookup_order": lookup})
    deployment.extra_config["ledger"] = {"url": postgres_url}
    deployment.extra_config["agents"] = {"support-bot": {"roles": ["support"], "keys": [hash_key(key)]}}
    with replicas(deployment, REPLICAS) as urls:
        async with (
            connect(urls[0], key) as one,
            connect(urls[1], key) as two,
            connect(urls[2], key) as three,
        ):
            fleet = [one, two, three]
            # A budget: twelve lookups at once across three replicas, five allowed.
            looked = await at_once(fleet, "billing__lookup_order", {"order_id": "ORD-1004"}, 4)
            assert sum(r.is_error is not True for r in looked) == BUDGET, [text_of(r) for r in looked]
            for result in (r for r in looked if r.is_error is True):
                assert_denied(result, "budget_exhausted")
            assert len(forwarded(deployment, "lookup_order")) == BUDGET
            # `unique`: six identical refunds at once, one through.
            small = {"order_id": "ORD-1004", "amount": 10, "currency": "USD"}
            refunded = await at_once(fleet, "billing__refund", small, 2)
            assert sum(r.is_error is not True for r in refunded) == 1, [text_of(r) for r in refunded]
            for result in (r for r in refunded if r.is_error is True):
                assert_denied(result, "duplicate_call")
            # An approval, filed on one replica, approved by an operator, used once by all three.
            large = {"order_id": "ORD-1004", "amount": 75, "currency": "USD"}
            pending = await one.call_tool("billing__refund", large)
            assert_denied(pending, "approval_pending")
            (request,) = [
                json.loads(line)
                for line in (await cli(deployment, "approvals", "list", "--json")).splitlines()
            ]
            await cli(deployment, "approvals", "approve", request["id"])
            raced = await at_once(fleet, "billing__refund", large, 1)
            assert sum(r.is_error is not True for r in raced) == 1, [text_of(r) for r in raced]
            for result in (r for r in raced if r.is_error is True):  # used, so filed again; or a duplicate
                assert text_of(result).startswith(("denied (approval_pending", "denied (duplicate_call")), (
                    text_of(result)
                )
    assert forwarded(deployment, "refund") == [small, large]

    tail = [
        json.loads(line)
        for line in (await cli(deployment, "ledger", "tail", "-n", "100", "--json")).splitlines()
    ]
    assert len(tail) == 12 + 6 + 1 + 3
    assert sorted(
        (c["tool"], c["decision"], c["outcome"]) for c in tail if c["decision"] == "allow"
    ) == sorted([("lookup_order", "allow", "ok")] * BUDGET + [("refund", "allow", "ok")] * 2)
    events = [
        json.loads(line)
        for line in (await cli(deployment, "ledger", "events", "--json", "-n", "100")).splitlines()
    ]
    used = [e for e in events if e["kind"] == "approval" and e["payload"].get("action") == "use"]
    assert [e["payload"]["id"] for e in used] == [request["id"]]
    assert (await cli(deployment, "ledger", "verify")).startswith("ok: ")
