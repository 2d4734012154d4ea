"""The ledger keeps the name the client called (schema 6): hashed (v4) where it is set, so an edit
is caught whichever way it is made and older rows verify as before; `tail --tool` finds a call by
it, and `stats` counts a tool once whether or not its call resolved."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from pathlib import Path

import pytest

from mcp_guard.ledger.base import Filter
from mcp_guard.ledger.chain import COLUMNS, HASH_DOMAIN_V4, OPTIONAL
from mcp_guard.ledger.entries import CallRecord
from mcp_guard.ledger.sqlite.engine import Ledger


def record(
    name: str | None, server: str | None = "billing", tool: str = "refund", decision: str = "allow"
) -> CallRecord:
    reason = None if decision == "allow" else "unknown_tool"
    return CallRecord(
        uuid.uuid4().hex, "support-bot", None, server, tool, {}, decision, reason, None, "ab" * 32, name=name
    )


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger.open(tmp_path / "ledger.db") as opened:
        yield opened


def test_the_name_called_is_recorded_and_hashed_v4_and_a_row_without_one_as_before(ledger: Ledger) -> None:
    ledger.record_decision(record("billing__refund"))
    ledger.record_decision(record(None))
    conn = sqlite3.connect(ledger.path)
    conn.row_factory = sqlite3.Row
    first, second = conn.execute("SELECT * FROM entries ORDER BY id").fetchall()
    conn.close()
    content = {name: first[name] for name in COLUMNS if name not in OPTIONAL or first[name] is not None}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert first["entry_hash"] == hashlib.sha256(HASH_DOMAIN_V4 + canonical.encode()).hexdigest()
    assert second["name"] is None
    assert ledger.verify().ok


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE entries SET name = NULL WHERE id = 1",
        "UPDATE entries SET name = 'billing__payout' WHERE id = 1",
        "UPDATE entries SET name = 'billing__refund' WHERE id = 2",
    ],
)
def test_the_name_is_covered_by_the_hash_whichever_way_it_is_edited(ledger: Ledger, edit: str) -> None:
    ledger.record_decision(record("billing__refund"))
    ledger.record_decision(record(None))
    conn = sqlite3.connect(ledger.path, isolation_level=None)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute(edit)
    conn.close()
    result = ledger.verify()
    assert not result.ok
    assert result.first_bad in (1, 2)


def test_tail_finds_a_call_by_the_name_called_and_stats_counts_a_tool_once(ledger: Ledger) -> None:
    granted = record("billing__refund")
    refused = record("billing__refund", server=None, tool="billing__refund", decision="deny")
    ledger.record_decision(granted)
    ledger.record_decision(refused)
    ledger.record_decision(record("billing__lookup_order", tool="lookup_order"))
    found = ledger.invocations(where=Filter(tool="billing__refund"))
    assert [i.call_id for i in found] == [granted.call_id, refused.call_id]
    assert found[0].to_json()["name"] == "billing__refund"
    assert [i.call_id for i in ledger.invocations(where=Filter(tool="billing.refund"))] == [granted.call_id]
    assert ledger.stats()["by_tool"] == {"billing__refund": 2, "billing__lookup_order": 1}
