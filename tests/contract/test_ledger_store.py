"""The LedgerStore contract: what every store must do, through the protocol only. Each test runs
against every store kind the `kind` fixture yields (SQLite, PostgreSQL); a new store joins by adding
a kind that can open it, tamper with it, and build a ledger of the previous schema."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path

import anyio
import psycopg
import pytest
from sqlite_utils import Database

from mcp_guard.config import LedgerConfig
from mcp_guard.errors import LedgerError
from mcp_guard.ledger import (
    ActivationEvent,
    ApprovalEvent,
    Filter,
    LockoutEvent,
    MarkEvent,
    PinEvent,
    PolicyEvent,
    UnlockEvent,
    Window,
    exists,
    open_ledger,
)
from mcp_guard.ledger.chain import HASHED_COLUMNS, ZERO_HASH, entry_hash
from mcp_guard.ledger.entries import CallRecord, format_ts
from mcp_guard.ledger.postgres.copy import copy_ledger
from mcp_guard.manifest import Budget

POLICY = "ab" * 32
WAIT = 60.0
PER_HOUR = Budget(max=Decimal(5), per="1h")


def record(decision: str = "allow", *, agent: str = "support-bot", **changes: object) -> CallRecord:
    rec = CallRecord(uuid.uuid4().hex, agent, None, "billing", "refund", {"amount": 40}, decision,
                     None if decision == "allow" else "limit_exceeded", None, POLICY)  # fmt: skip
    return replace(rec, **changes)  # type: ignore[arg-type]


def within_budget(window: Window, rec: CallRecord) -> CallRecord:
    """A settle step: one call each, at most PER_HOUR.max an hour per agent."""
    spent = window.spent("billing", "refund", PER_HOUR, (("agent", rec.agent),))
    if spent + 1 > PER_HOUR.max:
        return replace(rec, decision="deny", reason="limit_exceeded", detail="budget spent")
    return rec


@dataclass
class SQLiteKind:
    """How the contract opens, damages and ages a SQLite ledger."""

    path: Path

    @property
    def target(self) -> str:
        """What a process given only a string opens: the file's path, or the database's URL."""
        return str(self.path)

    def config(self, durability: str = "normal") -> LedgerConfig:
        return LedgerConfig(path=self.path, durability=durability)  # type: ignore[arg-type]

    def tamper(self, nth: int) -> None:
        """Edit the nth entry by hand, as someone with write access to the file could."""
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("DROP TRIGGER entries_no_update")
        conn.execute("UPDATE entries SET agent = 'someone-else' WHERE id = ?", (nth,))
        conn.close()

    def old_ledger(self, decisions: int) -> list[str]:
        """A ledger written before the method column (schema 1), with `decisions` allowed calls."""
        from mcp_guard.ledger.sqlite import schema  # the one place the contract looks inside a store

        conn = sqlite3.connect(self.path, isolation_level=None)
        schema.MIGRATIONS.apply(Database(conn), stop_before="0002_method")
        head, call_ids = ZERO_HASH, []
        for i in range(decisions):
            call_ids.append(uuid.uuid4().hex)
            row = dict.fromkeys(HASHED_COLUMNS)
            row |= {"kind": "decision", "call_id": call_ids[-1], "agent": "support-bot", "server": "billing",
                    "tool": "refund", "arguments": '{"amount":1}', "decision": "allow", "policy_hash": POLICY,
                    "prev_hash": head, "ts": f"2025-05-01T10:00:0{i}.000000Z"}  # fmt: skip
            head = entry_hash([row[name] for name in HASHED_COLUMNS])
            names = [*HASHED_COLUMNS, "entry_hash"]
            conn.execute(
                f"INSERT INTO entries ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [*(row[name] for name in HASHED_COLUMNS), head],
            )
        conn.close()
        return call_ids


@dataclass
class PostgresKind(SQLiteKind):
    """How the contract opens, damages and ages a PostgreSQL ledger (`path`: a scratch file)."""

    url: str = ""

    @property
    def target(self) -> str:
        return self.url

    def config(self, durability: str = "normal") -> LedgerConfig:
        return LedgerConfig(url=self.url, durability=durability)  # type: ignore[arg-type]

    def tamper(self, nth: int) -> None:
        """Edit the nth entry by hand, as the database's owner could (the guard's role cannot)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("ALTER TABLE entries DISABLE TRIGGER entries_no_update")
            conn.execute("UPDATE entries SET agent = 'someone-else' WHERE id = %s", (nth,))
            conn.execute("ALTER TABLE entries ENABLE TRIGGER entries_no_update")

    def old_ledger(self, decisions: int) -> list[str]:
        """Entries of a ledger written before the method column (hash v1), as `ledger copy` brings
        them from an old SQLite file: PostgreSQL ledgers never had that schema, but hold its rows."""
        call_ids = SQLiteKind(self.path).old_ledger(decisions)
        copy_ledger(self.path, self.url, self.url)
        return call_ids


def make_kind(request: pytest.FixtureRequest, tmp_path: Path) -> SQLiteKind:
    if request.param == "postgres":
        return PostgresKind(tmp_path / "source.db", request.getfixturevalue("postgres_url"))
    return SQLiteKind(tmp_path / "ledger.db")


@pytest.fixture(params=["sqlite", "postgres"])
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> SQLiteKind:
    return make_kind(request, tmp_path)


@pytest.fixture(params=["normal", "full"])
def durability(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_decisions_outcomes_and_events_form_one_chain_that_verifies(kind: SQLiteKind, durability: str):
    async with await open_ledger(kind.config(durability)) as store:
        first, denied = record(), record("deny")
        assert await store.decide(first) == first
        await store.outcome(first.call_id, "ok", 12.5)
        await store.decide(denied)
        await store.append(PolicyEvent(payload={"action": "loaded", "hash": POLICY}, policy_hash=POLICY))
        await store.flush()
        result = await store.verify()
        assert (result.ok, result.entries, result.problem) == (True, 4, "")
        got = await store.invocations()
        assert [(i.call_id, i.decision, i.outcome, i.method) for i in got] == [
            (first.call_id, "allow", "ok", "tools/call"),
            (denied.call_id, "deny", None, "tools/call"),
        ]
        assert [i.call_id for i in await store.invocations(limit=1)] == [denied.call_id]
        assert [i.call_id for i in await store.invocations(where=Filter(decision="deny"))] == [denied.call_id]


async def test_a_decision_is_in_the_ledger_for_every_reader_before_the_call_goes_on(kind: SQLiteKind):
    async with await open_ledger(kind.config()) as store:
        rec = record()
        await store.decide(rec)
        async with await open_ledger(kind.config(), readonly=True) as reader:
            (inv,) = await reader.invocations()
            assert (inv.call_id, inv.decision, inv.outcome) == (rec.call_id, "allow", None)


async def test_a_reused_call_id_cannot_record_a_second_decision(kind: SQLiteKind):
    async with await open_ledger(kind.config()) as store:
        rec = record()
        await store.decide(rec)
        with pytest.raises(LedgerError):
            await store.decide(rec)


async def test_an_outcome_is_committed_by_flush_by_close_or_at_once(kind: SQLiteKind, durability: str):
    async def outcomes() -> list[str | None]:
        async with await open_ledger(kind.config(), readonly=True) as reader:
            return [i.outcome for i in await reader.invocations()]

    store = await open_ledger(kind.config(durability))
    one, two = record(), record()
    await store.decide(one)
    await store.outcome(one.call_id, "ok", 1.0)
    await store.flush()
    assert await outcomes() == ["ok"]
    await store.decide(two)
    await store.outcome(two.call_id, "timeout", 2.0)
    if durability == "full":
        assert await outcomes() == ["ok", "timeout"]  # before the result is relayed
    await store.close()
    assert await outcomes() == ["ok", "timeout"]


async def test_the_settle_step_decides_inside_the_transaction(kind: SQLiteKind):
    async with await open_ledger(kind.config()) as store:
        decided = []
        for _ in range(7):
            rec = record()
            decided.append(await store.decide(rec, partial(within_budget, rec=rec)))
        assert [d.decision for d in decided] == ["allow"] * 5 + ["deny"] * 2
        theirs = record(agent="finance-bot")
        other = await store.decide(theirs, partial(within_budget, rec=theirs))
        assert other.decision == "allow"  # another scope has its own budget


async def test_concurrent_decisions_each_get_their_own_answer_and_one_bad_one_spoils_none(
    kind: SQLiteKind, durability: str
):
    """Decisions made at once by many calls of one guard (which the SQLite store commits together):
    the budget holds across them, a settle step that raises and a call id used twice fail only
    their own call, and the chain verifies with exactly the others in it."""
    async with await open_ledger(kind.config(durability)) as store:
        used = record()
        await store.decide(used)

        def broken(window: Window) -> CallRecord:
            raise ValueError("a settle step that cannot decide")

        recs = [record() for _ in range(9)]
        results: dict[int, CallRecord | Exception] = {}

        async def decide(n: int) -> None:
            rec = recs[n]
            settle = broken if n == 3 else partial(within_budget, rec=rec)
            try:
                results[n] = await store.decide(used if n == 6 else rec, None if n == 6 else settle)
            except (ValueError, LedgerError) as exc:
                results[n] = exc

        async with anyio.create_task_group() as tg:
            for n in range(9):
                tg.start_soon(decide, n)
        assert isinstance(results[3], ValueError)
        assert isinstance(results[6], LedgerError)
        decisions = [results[n].decision for n in range(9) if n not in (3, 6)]  # type: ignore[union-attr]
        assert sorted(decisions) == ["allow"] * 4 + ["deny"] * 3  # 5 an hour: `used` took one
        got = {i.call_id: i.decision for i in await store.invocations()}
        assert recs[3].call_id not in got
        assert len(got) == 8
        result = await store.verify()
        assert (result.ok, result.entries) == (True, 8)


SPENDER = textwrap.dedent(
    """
    import sys
    from dataclasses import replace
    from decimal import Decimal
    import anyio
    from mcp_guard.config import LedgerConfig
    from mcp_guard.ledger import open_ledger
    from mcp_guard.ledger.entries import CallRecord
    from mcp_guard.manifest import Budget

    BUDGET = Budget(max=Decimal(10), per="1h")

    def settle(window, rec):
        if window.spent("billing", "refund", BUDGET, (("agent", rec.agent),)) + 1 > BUDGET.max:
            return replace(rec, decision="deny", reason="limit_exceeded", detail="spent")
        return rec

    async def main():
        target = sys.argv[1]
        config = LedgerConfig(url=target) if target.startswith("postgresql:") else LedgerConfig(path=target)
        async with await open_ledger(config) as store:
            for i in range(int(sys.argv[2])):
                rec = CallRecord(f"{sys.argv[3]}-{i}", "support-bot", None, "billing", "refund", {}, "allow",
                                 None, None, "ab" * 32)
                await store.decide(rec, lambda w, rec=rec: settle(w, rec))

    anyio.run(main)
    """
)


def race(path: str, processes: int, calls: int) -> None:
    """`processes` processes deciding `calls` budgeted calls each, all at once."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SPENDER, str(path), str(calls), f"p{n}"], stderr=subprocess.PIPE
        )
        for n in range(processes)
    ]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=WAIT)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()


async def test_no_number_of_processes_can_overspend_a_budget(kind: SQLiteKind):
    async with await open_ledger(kind.config()):
        pass  # created before the race, so the processes only append
    await anyio.to_thread.run_sync(race, kind.target, 3, 15)
    async with await open_ledger(kind.config(), readonly=True) as reader:
        got = await reader.invocations()
        assert len(got) == 45
        assert sum(i.decision == "allow" for i in got) == 10
        assert (await reader.verify()).ok


async def test_events_are_read_by_kind_and_filters_and_dropped_from_a_read(kind: SQLiteKind):
    async with await open_ledger(kind.config()) as store:
        pin = PinEvent(
            payload={"tool": "refund", "digest": "d1", "source": "first-use"}, server="billing", tool="refund"
        )
        asked = ApprovalEvent(payload={"id": "r1", "action": "request"}, agent="support-bot", server="billing",
                              tool="refund", policy_hash=POLICY)  # fmt: skip
        await store.append(pin)
        await store.hold(lambda w: w.append(asked))
        await store.append(
            ApprovalEvent(payload={"id": "r2"}, agent="finance-bot", server="billing", tool="refund")
        )
        await store.read(lambda w: w.append(PinEvent(payload={"dropped": True}, server="billing")))
        assert await store.read(lambda w: list(w.pins(server="billing"))) == [pin]
        assert await store.read(lambda w: list(w.pins(server="tickets"))) == []
        mine = await store.read(
            lambda w: list(w.approvals(server="billing", tool="refund", agent="support-bot"))
        )
        assert mine == [asked]
        assert len(await store.read(lambda w: list(w.approvals()))) == 2
        assert (await store.verify()).entries == 3


async def test_verify_names_the_first_entry_edited_by_hand(kind: SQLiteKind):
    async with await open_ledger(kind.config()) as store:
        for _ in range(5):
            await store.decide(record())
        assert (await store.verify()).ok
        kind.tamper(3)
        result = await store.verify()
        assert (result.ok, result.first_bad, result.entries) == (False, 3, 2)


FOLLOWED = textwrap.dedent(
    """
    import sys, anyio
    from mcp_guard.config import LedgerConfig
    from mcp_guard.ledger import open_ledger
    from mcp_guard.ledger.entries import CallRecord

    async def main():
        target = sys.argv[1]
        config = LedgerConfig(url=target) if target.startswith("postgresql:") else LedgerConfig(path=target)
        async with await open_ledger(config) as store:
            rec = CallRecord(sys.argv[2], "finance-bot", None, "billing", "payout", {}, "deny", "limit_exceeded",
                             None, "ab" * 32)
            await store.decide(rec)

    anyio.run(main)
    """
)


async def test_follow_sees_what_another_process_commits(kind: SQLiteKind):
    async with await open_ledger(kind.config()) as store:
        await store.decide(record())
        after = await store.head()
        call_id = uuid.uuid4().hex
        seen: list[str] = []
        with anyio.fail_after(WAIT):
            done = await anyio.run_process([sys.executable, "-c", FOLLOWED, kind.target, call_id])
            assert done.returncode == 0
            async for batch in store.follow(after, where=Filter(agent="finance-bot")):
                seen += [inv.call_id for inv in batch]
                if seen:
                    break
        assert seen == [call_id]


async def test_a_ledger_of_the_previous_schema_is_read_and_migrated_with_its_chain_intact(kind: SQLiteKind):
    old = kind.old_ledger(3)
    assert exists(kind.config())
    async with await open_ledger(kind.config(), readonly=True) as reader:  # a reader never migrates
        assert [(i.call_id, i.method) for i in await reader.invocations()] == [(c, "tools/call") for c in old]
        assert (await reader.verify()).ok
    async with await open_ledger(kind.config()) as store:
        new = record(method="tools/call")
        await store.decide(new)
        got = await store.invocations()
        assert [(i.call_id, i.method) for i in got] == [(c, "tools/call") for c in [*old, new.call_id]]
        got_json = got[0].to_json()
        assert got_json["method"] == "tools/call"
        result = await store.verify()
        assert (result.ok, result.entries) == (True, 4)
    kind.tamper(4)  # the new entry's hash covers what it has
    async with await open_ledger(kind.config(), readonly=True) as reader:
        assert (await reader.verify()).first_bad == 4


async def test_a_missing_ledger_is_no_ledger_to_read(kind: SQLiteKind):
    assert not exists(kind.config())
    with pytest.raises(LedgerError):
        await open_ledger(kind.config(), readonly=True)


async def test_earlier_finds_the_latest_allowed_call_in_scope_within_the_window_only(kind: SQLiteKind):
    async with await open_ledger(kind.config()) as store:
        first = await store.decide(record(arguments={"order_id": "ORD-1", "amount": 40}))
        await store.decide(record(decision="deny", arguments={"order_id": "ORD-2", "amount": 40}))
        latest = await store.decide(
            record(agent="finance-bot", arguments={"order_id": "ord-1 ", "amount": 7})
        )

        def look(window: Window, scope: tuple[tuple[str, str], ...], seconds: float = 3600) -> object:
            return window.earlier("billing", "refund", seconds, scope)

        by_order = (("arg:order_id", "s:ord-1"),)  # as budgets compare: NFKC, case-folded, trimmed
        found = await store.read(partial(look, scope=by_order))
        assert found is not None
        assert found[0] == latest.call_id  # the latest, whoever its agent
        assert await store.read(partial(look, scope=(("arg:order_id", "s:ord-2"),))) is None  # denied
        whole = (("arguments", 'j:{"amount":40,"order_id":"ORD-1"}'),)
        assert (await store.read(partial(look, scope=whole)))[0] == first.call_id  # type: ignore[index]
        assert await store.read(partial(look, scope=(("agent", "intern"),))) is None
        # A window that ends before any of them was decided sees none of them.
        assert await store.read(partial(look, scope=by_order, seconds=0.000001)) is None


async def test_earlier_with_ok_counts_only_a_call_whose_outcome_was_ok(kind: SQLiteKind):
    scope = (("agent", "support-bot"),)

    def look(window: Window) -> object:
        return window.earlier("billing", "refund", 3600, scope, ok=True)

    async with await open_ledger(kind.config()) as store:
        pending = await store.decide(record())
        assert await store.read(look) is None  # in flight: no outcome yet
        await store.outcome(pending.call_id, "error", 3.0)
        await store.flush()
        assert await store.read(look) is None
        good = await store.decide(record())
        await store.outcome(good.call_id, "ok", 3.0)
        await store.decide(record())  # a later call still in flight does not hide the good one
        await store.flush()
        found = await store.read(look)
        assert found is not None
        assert found[0] == good.call_id


def _at(**delta: float) -> str:
    return format_ts(datetime.now(UTC) + timedelta(**delta))


async def test_activations_in_force_are_the_latest_of_each_agent_and_tool_unexpired_and_unrevoked(
    kind: SQLiteKind,
):
    def activation(agent: str, tool: str, action: str, **delta: float) -> ActivationEvent:
        payload = {"action": action, "until": _at(**delta), "reason": "r", "by": "op"}
        return ActivationEvent(payload=payload, agent=agent, server="billing", tool=tool)

    async with await open_ledger(kind.config()) as store:
        await store.append(activation("support-bot", "refund", "activate", hours=1))
        await store.append(activation("support-bot", "lookup_order", "activate", hours=1))
        await store.append(activation("support-bot", "lookup_order", "revoke"))
        await store.append(activation("finance-bot", "refund", "activate", seconds=-1))  # expired
        await store.append(activation("intern", "refund", "activate", hours=1))
        in_force = await store.read(lambda w: [(e.agent, e.tool) for e in w.activations()])
        assert sorted(in_force) == [("intern", "refund"), ("support-bot", "refund")]
        mine = await store.read(lambda w: list(w.activations(agent="support-bot")))
        assert [(e.tool, e.payload["by"]) for e in mine] == [("refund", "op")]
        assert mine[0].ts is not None


async def test_a_lockout_is_in_force_until_it_ends_or_an_unlock_follows_it(kind: SQLiteKind):
    async with await open_ledger(kind.config()) as store:
        await store.append(LockoutEvent(payload={"until": _at(minutes=15)}, agent="support-bot"))
        await store.append(LockoutEvent(payload={"until": _at(seconds=-1)}, agent="finance-bot"))
        await store.append(LockoutEvent(payload={"until": _at(minutes=15)}, agent="intern"))
        await store.append(UnlockEvent(payload={"by": "op"}, agent="intern"))
        locked = await store.read(lambda w: [e.agent for e in w.lockouts()])
        assert locked == ["support-bot"]
        assert await store.read(lambda w: list(w.lockouts(agent="intern"))) == []


async def test_denials_count_the_agents_own_refusals_since_its_last_lockout_or_unlock(kind: SQLiteKind):
    def deny(reason: str, agent: str = "support-bot") -> CallRecord:
        return record("deny", agent=agent, reason=reason)

    async with await open_ledger(kind.config()) as store:
        for reason in (
            "limit_exceeded",
            "unknown_tool",
            "approval_pending",
            "upstream_timeout",
            "locked_out",
        ):
            await store.decide(deny(reason))
        await store.decide(deny("limit_exceeded", agent="finance-bot"))
        await store.decide(record())  # allowed: not a refusal
        assert await store.read(lambda w: w.denials("support-bot", 3600)) == 2
        assert await store.read(lambda w: w.denials("support-bot", 0.000001)) == 0
        await store.append(UnlockEvent(payload={"by": "op"}, agent="support-bot"))
        assert await store.read(lambda w: w.denials("support-bot", 3600)) == 0
        await store.decide(deny("invalid_arguments"))
        assert await store.read(lambda w: w.denials("support-bot", 3600)) == 1
        assert await store.read(lambda w: w.denials("finance-bot", 3600)) == 1


async def test_marks_are_read_by_agent_and_session_newest_first(kind: SQLiteKind):
    def mark(names: list[str], session: str | None, agent: str = "support-bot") -> MarkEvent:
        return MarkEvent(payload={"marks": names}, agent=agent, session=session, server="crm", tool="get")

    async with await open_ledger(kind.config()) as store:
        await store.append(mark(["customer-data"], "s1"))
        await store.append(mark(["pii", "customer-data"], "s1"))
        await store.append(mark(["secrets"], "s2"))
        await store.append(mark(["no-session"], None))
        await store.append(mark(["theirs"], "s1", agent="finance-bot"))
        s1 = await store.read(lambda w: [e.marks for e in w.marks("support-bot", "s1", 3600)])
        assert s1 == [("pii", "customer-data"), ("customer-data",)]
        bare = await store.read(lambda w: [e.marks for e in w.marks("support-bot", None, 3600)])
        assert bare == [("no-session",)]
        every = await store.read(
            lambda w: [e.marks for e in w.marks("support-bot", None, 3600, any_session=True)]
        )
        assert len(every) == 4
        assert await store.read(lambda w: list(w.marks("support-bot", "s1", 0.000001))) == []
