"""A guard on a PostgreSQL ledger when the database fails under it, for real: its connection killed
in the middle of a decision's transaction, the database made read-only, the server stopped and
started again. Each time the call is refused `ledger_unavailable`, the upstream never sees it, and
once the database is back the same guard reconnects and serves; the ledger holds what it could
record, and its chain verifies."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

import anyio
import psycopg
from mcp import ClientSession

from mcp_guard.config import LedgerConfig
from mcp_guard.ledger import open_ledger
from tests.helpers import Deployment, assert_denied, inprocess_guard
from tests.postgres import create_database, embedded, start_server

TIMEOUT = 30.0


async def lookup(session: ClientSession, order: str) -> Any:
    with anyio.fail_after(TIMEOUT):
        return await session.call_tool("billing__lookup_order", {"order_id": order})


def forwarded(deployment: Deployment) -> list[str]:
    return [e["arguments"]["order_id"] for e in deployment.journal("billing")]


async def recorded(url: str) -> list[tuple[str, str, str | None]]:
    async with await open_ledger(LedgerConfig(url=url), readonly=True) as ledger:
        assert (await ledger.verify()).ok
        return [(i.arguments["order_id"], i.decision, i.outcome) for i in await ledger.invocations()]  # type: ignore[index]


def guard_backends(admin: psycopg.Connection[Any], *, waiting: bool = False) -> list[int]:
    """The guard's connections to the admin connection's database (waiting: on a lock)."""
    sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'mcp-guard'"
    if waiting:
        sql += " AND wait_event_type = 'Lock'"
    return [pid for (pid,) in admin.execute(sql.encode())]


async def test_a_connection_killed_mid_decision_or_a_read_only_database_refuses_the_call_and_then_serves(
    deployment: Deployment, postgres_server: str
) -> None:
    url = create_database(postgres_server)  # a database of its own: it is made read-only below
    deployment.with_billing().extra_config["ledger"] = {"url": url}
    with psycopg.connect(url, autocommit=True) as admin:
        database = url.split("?")[0].rsplit("/", 1)[1]
        async with inprocess_guard(deployment, "support-bot") as session:
            assert not (await lookup(session, "ORD-1001")).is_error

            # Killed mid-transaction: another session locks the entries table, so the guard's
            # decision, holding the chain head, waits inside its transaction to insert its row; its
            # connection is terminated there.
            with psycopg.connect(url) as holder:
                holder.execute(b"LOCK TABLE entries IN ACCESS EXCLUSIVE MODE")
                async with anyio.create_task_group() as tg:
                    results: list[Any] = []

                    async def call() -> None:
                        results.append(await lookup(session, "ORD-1002"))

                    tg.start_soon(call)
                    with anyio.fail_after(TIMEOUT):
                        while not (pids := guard_backends(admin, waiting=True)):  # noqa: ASYNC110 (a server's state)
                            await anyio.sleep(0.05)
                    admin.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
                holder.rollback()
            assert_denied(results[0], "ledger_unavailable")
            assert not (await lookup(session, "ORD-1003")).is_error  # a new connection, at once

            # Read-only: every new session of the database is; the guard's is made new.
            admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on'.encode())
            for pid in guard_backends(admin):
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            refused = await lookup(session, "ORD-1004")
            assert_denied(refused, "ledger_unavailable")
            admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only'.encode())
            for pid in guard_backends(admin):
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            assert not (await lookup(session, "ORD-1005")).is_error
    assert forwarded(deployment) == ["ORD-1001", "ORD-1003", "ORD-1005"]
    # Neither refusal could be recorded: the killed transaction rolled back, and a read-only
    # database takes nothing. What was decided and forwarded is all there, in one chain.
    assert await recorded(url) == [
        ("ORD-1001", "allow", "ok"),
        ("ORD-1003", "allow", "ok"),
        ("ORD-1005", "allow", "ok"),
    ]


async def test_a_database_server_restarting_refuses_calls_until_it_is_back_then_the_guard_serves(
    deployment: Deployment,
) -> None:
    pgdata = Path(tempfile.gettempdir()) / f"mcp-guard-test-restart-{uuid.uuid4().hex[:12]}"
    server = start_server(pgdata)  # a server of its own: it is stopped below
    try:
        url = str(server.get_uri())
        deployment.with_billing().extra_config["ledger"] = {"url": url}
        async with inprocess_guard(deployment, "support-bot") as session:
            assert not (await lookup(session, "ORD-1001")).is_error
            pg_ctl = embedded().pg_ctl
            await anyio.to_thread.run_sync(
                lambda: pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
            )
            assert_denied(await lookup(session, "ORD-1002"), "ledger_unavailable")
            await anyio.to_thread.run_sync(server.ensure_postgres_running)
            assert not (await lookup(session, "ORD-1003")).is_error
        assert forwarded(deployment) == ["ORD-1001", "ORD-1003"]
        assert await recorded(url) == [("ORD-1001", "allow", "ok"), ("ORD-1003", "allow", "ok")]
    finally:
        await anyio.to_thread.run_sync(server.cleanup)
        pgdata.with_suffix(".lock").unlink(missing_ok=True)
