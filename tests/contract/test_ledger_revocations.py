"""The LedgerStore contract for token revocations and the credential column, through the protocol
only (the stores and their kinds are those of test_ledger_store): a revocation one process
appends is read by every other, and a ledger of schema 3 (before the credential column) is read
and migrated with its chain intact."""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from sqlite_utils import Database

from mcp_guard.ledger import RevocationEvent, open_ledger
from mcp_guard.ledger.chain import COLUMNS, ZERO_HASH, entry_hash
from mcp_guard.ledger.postgres.copy import copy_ledger
from tests.contract.test_ledger_store import POLICY, PostgresKind, SQLiteKind, make_kind, record


@pytest.fixture(params=["sqlite", "postgres"])
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> SQLiteKind:
    return make_kind(request, tmp_path)


def schema3_ledger(kind: SQLiteKind, decisions: int) -> list[str]:
    """A ledger written before the credential column (schema 3): decisions with a method."""
    from mcp_guard.ledger.sqlite import schema  # the one place this looks inside a store

    conn = sqlite3.connect(kind.path, isolation_level=None)
    schema.MIGRATIONS.apply(Database(conn), stop_before="0004_credential")
    head, call_ids = ZERO_HASH, []
    for i in range(decisions):
        call_ids.append(uuid.uuid4().hex)
        row = dict.fromkeys(COLUMNS)
        row |= {"kind": "decision", "call_id": call_ids[-1], "agent": "support-bot", "server": "billing",
                "tool": "refund", "arguments": '{"amount":1}', "decision": "allow", "policy_hash": POLICY,
                "method": "tools/call", "prev_hash": head, "ts": f"2025-05-01T10:00:0{i}.000000Z"}  # fmt: skip
        head = entry_hash([row[name] for name in COLUMNS])
        names = [name for name in COLUMNS if name not in ("credential", "name")]  # later columns
        conn.execute(
            f"INSERT INTO entries ({', '.join(names)}, entry_hash) VALUES ({', '.join('?' * (len(names) + 1))})",
            [*(row[name] for name in names), head],
        )
    conn.close()
    if isinstance(kind, PostgresKind):  # its rows, as `ledger copy` brings them
        copy_ledger(kind.path, kind.url, kind.url)
    return call_ids


async def test_a_revocation_is_read_by_every_store_on_the_ledger(kind: SQLiteKind) -> None:
    async with await open_ledger(kind.config()) as writer, await open_ledger(kind.config()) as other:
        assert not await other.read(lambda w: w.revoked("jti-1"))
        await writer.append(RevocationEvent(payload={"jti": "jti-1", "by": "op"}))
        assert await other.read(lambda w: w.revoked("jti-1"))
        assert not await other.read(lambda w: w.revoked("jti-2"))
        assert (await other.verify()).ok


async def test_a_ledger_of_schema_3_is_read_and_migrated_with_its_chain_intact(kind: SQLiteKind) -> None:
    old = schema3_ledger(kind, 2)
    async with await open_ledger(kind.config(), readonly=True) as reader:  # a reader never migrates
        assert [(i.call_id, i.credential) for i in await reader.invocations()] == [(c, None) for c in old]
        assert (await reader.verify()).ok
    async with await open_ledger(kind.config()) as store:
        new = replace(record(method="tools/call"), credential="oauth:support-client:jti-9")
        await store.decide(new)
        assert [i.credential for i in await store.invocations()] == [None, None, "oauth:support-client:jti-9"]
        assert await store.read(lambda w: not w.revoked("jti-9"))
        result = await store.verify()
        assert (result.ok, result.entries) == (True, 3)
    kind.tamper(3)  # the new entry's hash covers what it has
    async with await open_ledger(kind.config(), readonly=True) as reader:
        assert (await reader.verify()).first_bad == 3
