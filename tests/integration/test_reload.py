"""Live reload: a valid change to guard.yaml or a manifest is put in force and clients are told;
a broken one keeps the last good policy and says why in the ledger; a call in flight completes
under the policy that decided it; an upstream whose manifest did not change keeps its session.
The upstreams run in memory; the ledger is read with plain sqlite3."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError

from mcp_guard.guard.app import open_guard
from mcp_guard.guard.caller import Caller
from mcp_guard.guard.reload import reload_once, watch
from tests.helpers import (
    TIMEOUT,
    Deployment,
    _connect,
    ledger_events,
    list_changed_listener,
    memory_transports,
    text_of,
)

WATCH_INTERVAL = 0.05  # the watcher's poll, fast for tests; the guard polls every second
EFFECT = 10.0  # how long a file edit may take to be in force


def policy_events(path: Path) -> list[dict[str, Any]]:
    return ledger_events(path, "policy")


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds, for at most EFFECT seconds."""
    with anyio.fail_after(EFFECT):
        for _ in iter(int, 1):
            if condition():
                return
            await anyio.sleep(WATCH_INTERVAL)


async def listed(session: Any) -> set[str]:
    with anyio.fail_after(TIMEOUT):
        return {tool.name for tool in (await session.list_tools()).tools}


async def call(session: Any, name: str, arguments: dict[str, Any]) -> Any:
    with anyio.fail_after(TIMEOUT):
        return await session.call_tool(name, arguments)


async def test_a_granted_tool_reaches_a_connected_client_with_list_changed(deployment: Deployment) -> None:
    deployment.with_examples()
    config, manifests = deployment.load()
    on_message, changed = list_changed_listener()
    async with (
        open_guard(config, manifests, ("support-bot",), memory_transports(manifests)) as guard,
        _connect(Caller(guard, "support-bot"), {"message_handler": on_message}) as session,
        anyio.create_task_group() as tg,
    ):
        first_hash = guard.policy.hash
        billing, tickets = guard.pool.upstreams["billing"], guard.pool.upstreams["tickets"]
        assert "billing__diagnostics" not in await listed(session)
        await tg.start(partial(watch, guard, interval=WATCH_INTERVAL, signals=False))
        deployment.manifests["billing"]["tools"]["diagnostics"] = {"allow": ["role:support"]}
        deployment.write()
        with anyio.fail_after(EFFECT):
            await changed.wait()
        assert "billing__diagnostics" in await listed(session)
        assert text_of(await call(session, "billing__diagnostics", {}))
        # Neither upstream block changed: the same sessions (and processes) serve on.
        assert guard.pool.upstreams["billing"] is billing
        assert guard.pool.upstreams["tickets"] is tickets
        assert billing.alive
        assert tickets.alive
        tg.cancel_scope.cancel()
    events = policy_events(deployment.ledger_path)
    assert [(e["action"], e["hash"]) for e in events] == [
        ("loaded", first_hash),
        ("loaded", guard.policy.hash),
    ]
    assert events[-1]["policy_hash"] == guard.policy.hash != first_hash
    assert [c["policy_hash"] for c in deployment.ledger()] == [guard.policy.hash]


async def test_a_broken_edit_keeps_the_last_policy_and_is_recorded_as_rejected(
    deployment: Deployment,
) -> None:
    deployment.with_examples()
    config, manifests = deployment.load()
    async with (
        open_guard(config, manifests, ("support-bot",), memory_transports(manifests)) as guard,
        _connect(Caller(guard, "support-bot"), {}) as session,
        anyio.create_task_group() as tg,
    ):
        good = guard.policy
        await tg.start(partial(watch, guard, interval=WATCH_INTERVAL, signals=False))
        deployment.manifests["billing"]["bogus"] = 1
        deployment.write()
        await eventually(
            lambda: any(e["action"] == "rejected" for e in policy_events(deployment.ledger_path))
        )
        assert guard.policy is good
        result = await call(session, "billing__lookup_order", {"order_id": "ORD-1001"})
        assert result.is_error is not True, text_of(result)
        tg.cancel_scope.cancel()
    [rejected] = [e for e in policy_events(deployment.ledger_path) if e["action"] == "rejected"]
    assert "bogus" in rejected["reason"]
    assert rejected["policy_hash"] == good.hash
    [decided] = deployment.ledger()
    assert (decided["decision"], decided["policy_hash"]) == ("allow", good.hash)


async def test_a_call_in_flight_during_a_reload_completes_under_the_policy_that_decided_it(
    deployment: Deployment,
) -> None:
    deployment.with_hostile()
    config, manifests = deployment.load()
    async with (
        open_guard(config, manifests, ("qa-bot",), memory_transports(manifests)) as guard,
        _connect(Caller(guard, "qa-bot"), {}) as session,
        anyio.create_task_group() as tg,
    ):
        old_hash, old = guard.policy.hash, guard.pool.upstreams["hostile"]
        results: list[Any] = []

        async def slow() -> None:
            results.append(await call(session, "hostile__slow", {"seconds": 3}))

        tg.start_soon(slow)
        await eventually(lambda: bool(deployment.journal("hostile")))  # the call reached the upstream
        # A changed upstream block: a new session, while the old one drains.
        deployment.manifests["hostile"]["upstream"]["env"]["RELOADED"] = "1"
        assert await reload_once(guard, deployment.write())
        new = guard.pool.upstreams["hostile"]
        assert new is not old
        assert guard.policy.hash != old_hash
        await eventually(lambda: bool(results))
        assert text_of(results[0]) == "done"
        await eventually(lambda: not old.alive)  # the old session stops once its last call has ended
        assert text_of(await call(session, "hostile__echo", {"text": "hi"}))
        assert new.alive
    slow_call, echo_call = deployment.ledger()
    assert (slow_call["tool"], slow_call["outcome"], slow_call["policy_hash"]) == ("slow", "ok", old_hash)
    assert echo_call["policy_hash"] == guard.policy.hash


async def test_an_agent_removed_from_guard_yaml_sees_no_tools(deployment: Deployment) -> None:
    deployment.with_examples()
    config, manifests = deployment.load()
    async with (
        open_guard(config, manifests, ("support-bot",), memory_transports(manifests)) as guard,
        _connect(Caller(guard, "support-bot"), {}) as session,
    ):
        assert await listed(session)
        del deployment.agents["support-bot"]
        assert await reload_once(guard, deployment.write())
        assert await listed(session) == set()
        with pytest.raises(MCPError):
            await call(session, "billing__lookup_order", {"order_id": "ORD-1001"})
    assert [c["decision"] for c in deployment.ledger()] == ["deny"]


async def test_a_forbid_that_a_grant_contradicts_is_rejected_on_reload_and_the_last_policy_stays(
    deployment: Deployment,
) -> None:
    deployment.with_examples()
    config, manifests = deployment.load()
    async with (
        open_guard(config, manifests, ("support-bot",), memory_transports(manifests)) as guard,
        _connect(Caller(guard, "support-bot"), {}) as session,
        anyio.create_task_group() as tg,
    ):
        good = guard.policy
        await tg.start(partial(watch, guard, interval=WATCH_INTERVAL, signals=False))
        deployment.extra_config["forbid"] = ["billing.refund"]  # support-bot is granted refund
        deployment.write()
        await eventually(
            lambda: any(e["action"] == "rejected" for e in policy_events(deployment.ledger_path))
        )
        assert guard.policy is good
        assert "billing__refund" in await listed(session)
        tg.cancel_scope.cancel()
    [rejected] = [e for e in policy_events(deployment.ledger_path) if e["action"] == "rejected"]
    assert "billing.refund is forbidden" in rejected["reason"]
    assert "tools.refund" in rejected["reason"]


async def test_a_forbid_put_in_force_by_reload_withholds_the_tool_from_connected_clients(
    deployment: Deployment,
) -> None:
    deployment.with_examples()
    config, manifests = deployment.load()
    on_message, changed = list_changed_listener()
    async with (
        open_guard(config, manifests, ("finance-bot",), memory_transports(manifests)) as guard,
        _connect(Caller(guard, "finance-bot"), {"message_handler": on_message}) as session,
        anyio.create_task_group() as tg,
    ):
        assert "billing__diagnostics" in await listed(session)
        await tg.start(partial(watch, guard, interval=WATCH_INTERVAL, signals=False))
        deployment.manifests["billing"]["tools"]["diagnostics"] = {"allow": []}
        deployment.extra_config["forbid"] = ["*.diagnostics"]
        deployment.write()
        with anyio.fail_after(EFFECT):
            await changed.wait()
        assert "billing__diagnostics" not in await listed(session)
        with pytest.raises(MCPError, match="Unknown tool"):
            await call(session, "billing__diagnostics", {})
        tg.cancel_scope.cancel()
    assert [(c["tool"], c["decision"], c["reason"]) for c in deployment.ledger()] == [
        ("billing__diagnostics", "deny", "unknown_tool")
    ]
    assert [e for e in deployment.journals() if e["tool"] == "diagnostics"] == []
