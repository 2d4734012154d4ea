"""Group commit in the SQLite store. `durability: normal`: while calls are in flight, the decisions
made in one turn of the event loop are committed in one transaction, and a call alone is committed
at once. `durability: full`: the decisions made while one commit waits for the disk share the next.
A caller cancelled while its decision waits finds it committed all the same (write-ahead: the
decision is in the ledger whether or not the call goes on)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from mcp_guard.ledger.entries import CallRecord
from mcp_guard.ledger.sqlite.store import SQLiteStore

POLICY = "cd" * 32


def record() -> CallRecord:
    return CallRecord(uuid.uuid4().hex, "support-bot", None, "billing", "refund", {"amount": 1}, "allow",
                      None, None, POLICY)  # fmt: skip


def counting(store: SQLiteStore) -> list[int]:
    """The size of each group the engine is asked to commit."""
    sizes: list[int] = []
    commit = store.engine.record_decisions

    def spy(batch: Any) -> Any:
        sizes.append(len(batch))
        return commit(batch)

    store.engine.record_decisions = spy  # type: ignore[method-assign]
    return sizes


async def test_decisions_made_in_one_turn_while_calls_are_in_flight_share_one_transaction(
    tmp_path: Path,
) -> None:
    async with SQLiteStore.open(tmp_path / "ledger.db") as store:
        sizes, ran = counting(store), []

        async def another() -> None:
            ran.append("another task")

        async with anyio.create_task_group() as tg:
            tg.start_soon(another)
            first = await store.decide(record())  # no call in flight: committed at once ...
            assert ran == []  # ... without giving the event loop a turn
        async with anyio.create_task_group() as tg:  # `first` is in flight (no outcome yet)
            for _ in range(12):
                tg.start_soon(store.decide, record())
        assert sizes == [1, 12]
        for inv in await store.invocations():
            await store.outcome(inv.call_id, "ok", 1.0)
        await store.decide(record())  # every call has ended: alone again
        assert sizes == [1, 12, 1]
        assert first.decision == "allow"
        assert len(await store.invocations()) == 14
        assert (await store.verify()).ok


async def test_a_caller_cancelled_while_its_decision_waits_finds_it_committed(tmp_path: Path) -> None:
    async with SQLiteStore.open(tmp_path / "ledger.db") as store:
        await store.decide(record())  # in flight: the next decision waits for its group
        rec, reached = record(), []
        with anyio.CancelScope() as scope:
            scope.cancel()  # cancelled before the decision is even asked for
            decided = await store.decide(rec)  # returns: the decision was committed
            reached.append(decided.decision)
            await anyio.lowlevel.checkpoint()  # where the cancellation lands
            reached.append("not reached")
        assert scope.cancelled_caught
        assert reached == ["allow"]
        assert [(i.call_id, i.decision) for i in await store.invocations(limit=1)] == [(rec.call_id, "allow")]


async def test_with_durability_full_the_decisions_made_while_one_is_on_disk_share_the_next_commit(
    tmp_path: Path,
) -> None:
    async with SQLiteStore.open(tmp_path / "ledger.db", "full") as store:
        sizes = counting(store)
        decided: list[CallRecord] = []

        async def decide() -> None:
            decided.append(await store.decide(record()))

        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(decide)
        assert sizes == [1, 11]  # the first waits for the disk; the others arrive meanwhile
        await store.decide(record())
        assert sizes == [1, 11, 1]  # alone: committed at once, nothing is waited for
        assert [d.decision for d in decided] == ["allow"] * 12
        assert len(await store.invocations()) == 13
        assert (await store.verify()).ok


async def test_with_durability_full_outcomes_share_the_commits_and_are_on_disk_before_they_return(
    tmp_path: Path,
) -> None:
    async with SQLiteStore.open(tmp_path / "ledger.db", "full") as store:
        sizes = counting(store)

        async def call(n: int) -> None:
            decided = await store.decide(record())
            await store.outcome(decided.call_id, "ok", float(n))

        async with anyio.create_task_group() as tg:
            for n in range(12):
                tg.start_soon(call, n)
        assert len(sizes) < 12  # 24 entries, each committed before its caller went on: far fewer commits
        async with SQLiteStore.open(tmp_path / "ledger.db", readonly=True) as reader:  # another connection
            outcomes = [i.outcome for i in await reader.invocations()]
        assert outcomes == ["ok"] * 12
        assert (await store.verify()).ok
