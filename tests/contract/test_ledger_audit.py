"""The LedgerStore contract for what leaves the host: `anchor` (the ledger's id and where it stands,
counted on from an earlier anchor), `entries` (every kind, with the hashes that chain them) and
`verify(since=)`, through the protocol only. A new store joins by adding a kind to `store_config`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mcp_guard.config import LedgerConfig
from mcp_guard.ledger import LedgerStore, PolicyEvent, open_ledger
from mcp_guard.ledger.chain import ZERO_HASH
from mcp_guard.ledger.entries import CallRecord

POLICY = "cd" * 32


@pytest.fixture(params=["sqlite", "postgres"])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerConfig:
    if request.param == "postgres":
        return LedgerConfig(url=request.getfixturevalue("postgres_url"))
    return LedgerConfig(path=tmp_path / "ledger.db")


@pytest.fixture
async def store(store_config: LedgerConfig) -> AsyncIterator[LedgerStore]:
    async with await open_ledger(store_config) as opened:
        yield opened


async def decide(store: LedgerStore, decision: str = "allow") -> str:
    rec = CallRecord(uuid.uuid4().hex, "support-bot", None, "billing", "refund", {"amount": 1}, decision,
                     None if decision == "allow" else "limit_exceeded", None, POLICY)  # fmt: skip
    await store.decide(rec)
    if decision == "allow":
        await store.outcome(rec.call_id, "ok", 2.0)
    await store.flush()
    return rec.call_id


async def test_an_anchor_names_the_ledger_by_its_first_entry_and_counts_on_from_an_earlier_one(
    store: LedgerStore,
):
    assert await store.anchor() is None
    await decide(store)
    first = await store.anchor()
    assert first is not None
    (one, two) = await store.entries()
    assert (first.ledger, first.entry_id, first.entry_hash, first.entries) == (
        one["entry_hash"],
        2,
        two["entry_hash"],
        2,
    )
    await decide(store, "deny")
    await store.append(PolicyEvent(payload={"action": "loaded", "hash": POLICY}, policy_hash=POLICY))
    later = await store.anchor(since=first)
    assert later is not None
    assert (later.ledger, later.entry_id, later.entries) == (first.ledger, 4, 4)
    at = await store.anchor(upto=2, since=None)
    assert at == first
    assert await store.anchor(upto=99) is None


async def test_entries_are_every_kind_oldest_first_with_the_hashes_that_chain_them(store: LedgerStore):
    call_id = await decide(store)
    await store.append(PolicyEvent(payload={"action": "loaded", "hash": POLICY}, policy_hash=POLICY))
    entries = await store.entries()
    assert [e["kind"] for e in entries] == ["decision", "outcome", "policy"]
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)
    assert entries[0]["prev_hash"] == ZERO_HASH
    assert [e["prev_hash"] for e in entries[1:]] == [e["entry_hash"] for e in entries[:-1]]
    assert entries[0]["call_id"] == entries[1]["call_id"] == call_id
    assert entries[0]["arguments"] == {"amount": 1}
    assert entries[2]["payload"] == {"action": "loaded", "hash": POLICY}
    assert await store.entries(after=int(entries[0]["id"]), limit=1) == [entries[1]]


async def test_verify_since_an_anchor_walks_only_the_entries_after_it(store: LedgerStore):
    await decide(store)
    anchor = await store.anchor()
    assert anchor is not None
    await decide(store, "deny")
    result = await store.verify(since=anchor)
    assert (result.ok, result.entries) == (True, 1)
    full = await store.verify()
    assert (full.ok, full.entries, full.head) == (True, 3, result.head)
