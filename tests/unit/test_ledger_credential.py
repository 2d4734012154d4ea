"""The ledger's `credential` column (schema 4) and token revocations: recorded with each decision
and covered by the hash (v3) whichever way it is edited, chains written before it still verify,
and a revocation is read by any process on the file."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from mcp_guard.ledger.base import RevocationEvent
from mcp_guard.ledger.chain import COLUMNS, HASH_DOMAIN_V3, OPTIONAL
from mcp_guard.ledger.entries import CallRecord
from mcp_guard.ledger.sqlite.engine import Ledger


def record(credential: str | None) -> CallRecord:
    return CallRecord(
        call_id=uuid.uuid4().hex,
        agent="support-bot",
        session=None,
        server="billing",
        tool="refund",
        arguments={"amount": 4},
        decision="allow",
        reason=None,
        detail=None,
        policy_hash="ab" * 32,
        credential=credential,
    )


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger.open(tmp_path / "ledger.db") as opened:
        yield opened


def rows(ledger: Ledger) -> list[sqlite3.Row]:
    conn = sqlite3.connect(ledger.path)
    conn.row_factory = sqlite3.Row
    try:
        return list(conn.execute("SELECT * FROM entries ORDER BY id"))
    finally:
        conn.close()


def test_each_decision_records_its_credential_hashed_v3_and_a_null_one_as_before(ledger: Ledger) -> None:
    for credential in ("oauth:support-client:jti-1", "key:5e884898da28", "stdio", None):
        ledger.record_decision(record(credential))
    found = rows(ledger)
    assert [r["credential"] for r in found] == [
        "oauth:support-client:jti-1",
        "key:5e884898da28",
        "stdio",
        None,
    ]
    first = found[0]
    content = {name: first[name] for name in COLUMNS if name not in OPTIONAL or first[name] is not None}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert first["entry_hash"] == hashlib.sha256(HASH_DOMAIN_V3 + canonical.encode()).hexdigest()
    assert ledger.verify().ok
    (view,) = (
        sqlite3.connect(ledger.path)
        .execute("SELECT credential FROM invocations ORDER BY id LIMIT 1")
        .fetchall()
    )
    assert view == ("oauth:support-client:jti-1",)


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE entries SET credential = NULL WHERE id = 1",
        "UPDATE entries SET credential = 'oauth:finance-client:jti-1' WHERE id = 1",
        "UPDATE entries SET credential = 'stdio' WHERE id = 2",
    ],
)
def test_the_credential_is_covered_by_the_hash_whichever_way_it_is_edited(ledger: Ledger, edit: str) -> None:
    ledger.record_decision(record("oauth:support-client:jti-1"))
    ledger.record_decision(record(None))
    conn = sqlite3.connect(ledger.path, isolation_level=None)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute(edit)
    conn.close()
    result = ledger.verify()
    assert not result.ok
    assert result.first_bad in (1, 2)


def test_a_revocation_is_seen_by_every_process_on_the_file_and_names_only_its_token(ledger: Ledger) -> None:
    assert not ledger.peek(lambda w: w.revoked("jti-1"))
    ledger.record_row(RevocationEvent(payload={"jti": "jti-1", "by": "ops"}).row())
    with Ledger.open(ledger.path) as other:
        assert other.peek(lambda w: w.revoked("jti-1"))
        assert not other.peek(lambda w: w.revoked("jti-2"))
        assert not other.peek(lambda w: w.revoked('jti-1" OR 1=1 --'))
    assert ledger.verify().ok


def test_a_credential_over_the_detail_cap_is_cut_not_refused(ledger: Ledger) -> None:
    ledger.record_decision(replace(record("oauth:" + "s" * 5000 + ":j"), agent="a"))
    assert len(rows(ledger)[0]["credential"]) == 1024


def test_ledger_tail_json_shows_the_credential(ledger: Ledger) -> None:
    ledger.record_decision(record("token:abc123"))
    ledger.record_decision(record(None))
    first, second = ledger.invocations()
    assert (first.credential, second.credential) == ("token:abc123", None)
    assert first.to_json()["credential"] == "token:abc123"
    with Ledger.open_readonly(ledger.path) as reader:
        assert [i.credential for i in reader.invocations()] == ["token:abc123", None]
