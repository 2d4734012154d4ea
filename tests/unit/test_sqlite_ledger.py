"""The SQLite store's engine on real files: chain, tamper detection, failure modes, queries and the
CLI view. The one test module allowed to look inside mcp_guard.ledger.sqlite; what every store must
do is tests/contract/test_ledger_store.py."""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mcp_guard.cli.ledger import (
    Follower,
    add_ledger_parser,
    format_line,
    json_line,
    parse_duration,
    printable,
    run_ledger,
)
from mcp_guard.errors import LedgerError, LedgerUnavailable
from mcp_guard.ledger.base import ApprovalEvent, Filter, Invocation
from mcp_guard.ledger.chain import (
    COLUMNS,
    HASH_DOMAIN,
    HASH_DOMAIN_V2,
    HASHED_COLUMNS,
    OPTIONAL,
    ZERO_HASH,
    entry_hash,
)
from mcp_guard.ledger.entries import CallRecord
from mcp_guard.ledger.sqlite import verify as ledger_verify
from mcp_guard.ledger.sqlite.engine import Ledger
from mcp_guard.ledger.sqlite.schema import BACKSTOP_PAGES
from mcp_guard.secrets import Scrubber

POLICY = "ab" * 32
T0 = datetime(2025, 5, 1, 10, 0, 0, tzinfo=UTC)


def record(
    decision: str = "allow",
    *,
    agent: str = "support-bot",
    server: str | None = "billing",
    tool: str = "refund",
    arguments: object = None,
    reason: str | None = None,
    detail: str | None = None,
    call_id: str | None = None,
) -> CallRecord:
    return CallRecord(
        call_id=call_id or uuid.uuid4().hex,
        agent=agent,
        session=None,
        server=server,
        tool=tool,
        arguments={"amount": 40} if arguments is None else arguments,
        decision=decision,
        reason=reason if reason is not None or decision == "allow" else "limit_exceeded",
        detail=detail,
        policy_hash=POLICY,
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def ledger(path: Path):
    with Ledger.open(path) as opened:
        yield opened


def fill(ledger: Ledger, count: int) -> list[str]:
    """`count` entries: allowed calls with outcomes, a denial every fifth entry, and events."""
    call_ids = []
    while ledger.last_id() < count:
        n = ledger.last_id()
        if n % 5 == 4:
            ledger.record_decision(record("deny", reason="limit_exceeded", arguments={"amount": 400}))
        elif n % 7 == 6:
            ledger.record_event("policy", {"reason": "reload", "n": n}, POLICY)
        elif call_ids and n % 2 == 1:
            ledger.record_outcome(call_ids[-1], "ok", 12.5 + n)
        else:
            rec = record(arguments={"amount": n, "note": "ünïcode ✓"})
            ledger.record_decision(rec)
            call_ids.append(rec.call_id)
    return call_ids


Raw = Callable[[Path], sqlite3.Connection]


@pytest.fixture
def raw() -> Iterator[Raw]:
    """Plain sqlite3 connections, as someone editing the file by hand would use; closed afterwards."""
    opened: list[sqlite3.Connection] = []

    def connect(path: Path) -> sqlite3.Connection:
        opened.append(sqlite3.connect(path, isolation_level=None))
        return opened[-1]

    yield connect
    for conn in opened:
        conn.close()


def drop_triggers(conn: sqlite3.Connection) -> None:
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("DROP TRIGGER entries_no_delete")


# -- opening ------------------------------------------------------------------------------------


def test_opening_creates_the_schema_and_reads_back_wal_and_synchronous_normal(
    ledger: Ledger, path: Path, raw: Raw
):
    conn = raw(path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert ledger._conn.execute("PRAGMA synchronous").fetchone() == (1,)
    assert ledger._conn.execute("PRAGMA busy_timeout").fetchone() == (2000,)
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"entries", "invocations", "entries_no_update", "entries_no_delete", "_sqlite_migrations"} <= names
    assert {"entries_call_id", "entries_agent", "entries_server_tool_ts"} <= names


def test_full_durability_sets_synchronous_full(path: Path):
    with Ledger.open(path, "full", busy_timeout=0.5) as ledger:
        assert ledger._conn.execute("PRAGMA synchronous").fetchone() == (2,)
        assert ledger._conn.execute("PRAGMA busy_timeout").fetchone() == (500,)


def test_pragmas_that_do_not_take_are_a_ledger_error():
    # An in-memory database cannot use WAL: the read-back catches it instead of running without it.
    with pytest.raises(LedgerError, match=r"pragmas not applied: .*'memory'"):
        Ledger.open(Path(":memory:"))


def test_reopening_applies_each_migration_once(path: Path, raw: Raw):
    for _ in range(3):
        Ledger.open(path).close()
    rows = raw(path).execute("SELECT migration_set, name FROM _sqlite_migrations").fetchall()
    assert rows == [
        ("mcp_guard_ledger", "0001_entries"),
        ("mcp_guard_ledger", "0002_method"),
        ("mcp_guard_ledger", "0003_standing"),
        ("mcp_guard_ledger", "0004_credential"),
        ("mcp_guard_ledger", "0005_invocations_in_order"),
        ("mcp_guard_ledger", "0006_name"),
    ]
    assert raw(path).execute("PRAGMA user_version").fetchone() == (6,)


def test_a_ledger_from_a_newer_version_is_refused(path: Path, raw: Raw):
    Ledger.open(path).close()
    raw(path).execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
        "VALUES ('mcp_guard_ledger', '0099_future', '')"
    )
    with pytest.raises(LedgerError, match="newer mcp-guard"):
        Ledger.open(path)


def test_opening_in_a_missing_directory_names_the_path(tmp_path: Path):
    target = tmp_path / "missing" / "ledger.db"
    with pytest.raises(LedgerError, match=rf"^{re.escape(str(target))}: directory .* does not exist"):
        Ledger.open(target)


def test_opening_a_directory_or_a_file_that_is_not_a_database_is_a_ledger_error(tmp_path: Path):
    with pytest.raises(LedgerError, match="is a directory"):
        Ledger.open(tmp_path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, just some text long enough to have a header" * 20)
    with pytest.raises(LedgerError, match=rf"^{re.escape(str(junk))}: not a SQLite database"):
        Ledger.open(junk)


def test_a_reader_needs_an_existing_ledger(tmp_path: Path):
    with pytest.raises(LedgerError, match="no ledger file"):
        Ledger.open_readonly(tmp_path / "none.db")
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    empty.touch()
    with pytest.raises(LedgerError, match="not an mcp-guard ledger"):
        Ledger.open_readonly(empty)


# -- the chain ----------------------------------------------------------------------------------


def test_chain_verifies_after_many_appends(ledger: Ledger, path: Path, raw: Raw):
    fill(ledger, 600)
    result = ledger.verify()
    assert result.ok, result.problem
    assert (result.entries, result.first_bad, result.problem) == (600, None, "")
    rows = raw(path).execute("SELECT prev_hash, entry_hash FROM entries ORDER BY id").fetchall()
    assert rows[0][0] == ZERO_HASH
    assert all(rows[i][0] == rows[i - 1][1] for i in range(1, len(rows)))
    assert result.head == rows[-1][1]


def test_entry_hash_is_sha256_of_the_domain_and_canonical_json_of_the_row(
    ledger: Ledger, path: Path, raw: Raw
):
    hostile = {
        "b": 'quote " back \\ nl \n nul \x00 esc \x1b[31m',
        "a": ["\u2028", "é", "\U0001f600", 1.5e300],
    }
    ledger.record_decision(record(arguments=hostile, detail="tab\there"))
    ledger.record_outcome(uuid.uuid4().hex, "timeout", 0.1 + 0.2, "\x7f\x85")
    for ms in (0.0, -0.0, 1e16, 1e-7, 5e-324, 1.7976931348623157e308, 123456789.123, 12):
        ledger.record_outcome(uuid.uuid4().hex, "ok", ms)
    conn = raw(path)
    conn.row_factory = sqlite3.Row
    for row in conn.execute("SELECT * FROM entries"):
        content = {name: row[name] for name in COLUMNS}
        assert set(row.keys()) - set(content) == {"id", "entry_hash"}
        # A decision has a method and is hashed with it (v2); an outcome has none and is hashed v1.
        assert (row["method"] is not None) == (row["kind"] == "decision")
        domain = HASH_DOMAIN if row["method"] is None else HASH_DOMAIN_V2
        hashed = {k: v for k, v in content.items() if k not in OPTIONAL or v is not None}
        canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        expected = hashlib.sha256(domain + canonical.encode()).hexdigest()
        assert row["entry_hash"] == expected == entry_hash([content[name] for name in COLUMNS])
    stored = conn.execute("SELECT arguments FROM entries WHERE kind = 'decision'").fetchone()[0]
    assert stored == json.dumps(hostile, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_update_and_delete_are_refused_by_triggers(ledger: Ledger, path: Path, raw: Raw):
    fill(ledger, 3)
    conn = raw(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE entries SET agent = 'someone-else' WHERE id = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM entries WHERE id = 2")
    assert ledger.verify().ok


def test_dropped_triggers_alone_fail_verify_without_a_bad_entry(ledger: Ledger, path: Path, raw: Raw):
    fill(ledger, 10)
    drop_triggers(raw(path))
    result = ledger.verify()
    assert (result.ok, result.first_bad, result.entries) == (False, None, 10)
    assert "'entries_no_update' is missing" in result.problem


def test_an_edited_entry_is_named_by_verify(ledger: Ledger, path: Path, raw: Raw):
    fill(ledger, 20)
    conn = raw(path)
    drop_triggers(conn)
    conn.execute("""UPDATE entries SET arguments = '{"amount":1}' WHERE id = 7""")
    result = ledger.verify()
    assert (result.ok, result.first_bad, result.entries) == (False, 7, 6)
    assert result.problem.startswith("entry 7: content does not match")
    assert "trigger" in result.problem


def test_a_deleted_entry_breaks_the_chain_at_the_next_one(ledger: Ledger, path: Path, raw: Raw):
    fill(ledger, 20)
    conn = raw(path)
    drop_triggers(conn)
    conn.execute("DELETE FROM entries WHERE id = 9")
    result = ledger.verify()
    assert result.first_bad == 10
    assert "entries 9 before it are missing" in result.problem


def test_deleting_the_first_entry_is_caught(ledger: Ledger, path: Path, raw: Raw):
    fill(ledger, 5)
    conn = raw(path)
    drop_triggers(conn)
    conn.execute("DELETE FROM entries WHERE id = 1")
    assert ledger.verify().first_bad == 2


def test_two_swapped_entries_are_caught_at_the_first(ledger: Ledger, path: Path, raw: Raw):
    fill(ledger, 20)
    conn = raw(path)
    drop_triggers(conn)
    conn.execute("UPDATE entries SET id = -4 WHERE id = 4")
    conn.execute("UPDATE entries SET id = 4 WHERE id = 11")
    conn.execute("UPDATE entries SET id = 11 WHERE id = -4")
    result = ledger.verify()
    assert (result.first_bad, result.entries) == (4, 3)
    assert "prev_hash does not match entry 3" in result.problem


def test_an_entry_appended_by_hand_without_a_valid_hash_is_caught(ledger: Ledger, path: Path, raw: Raw):
    fill(ledger, 8)
    conn = raw(path)
    head = conn.execute("SELECT entry_hash FROM entries ORDER BY id DESC LIMIT 1").fetchone()[0]
    conn.execute(
        "INSERT INTO entries (ts, kind, call_id, agent, tool, arguments, decision, prev_hash, entry_hash) "
        "VALUES ('2025-05-01T10:00:00.000000Z', 'decision', 'forged', 'finance-bot', 'refund', '{}', "
        "'allow', ?, ?)",
        (head, "f" * 64),
    )
    result = ledger.verify()
    assert (result.ok, result.first_bad, result.entries) == (False, 9, 8)
    assert "entry 9: content does not match its entry_hash" in result.problem


def test_an_entry_inserted_by_hand_with_a_wrong_prev_hash_is_caught(ledger: Ledger, path: Path, raw: Raw):
    fill(ledger, 4)
    raw(path).execute(
        "INSERT INTO entries (ts, kind, prev_hash, entry_hash) VALUES ('x', 'policy', ?, ?)",
        (ZERO_HASH, "0" * 64),
    )
    result = ledger.verify()
    assert result.first_bad == 5
    assert "prev_hash does not match entry 4" in result.problem


def test_a_cut_off_tail_is_caught_through_the_highest_id_ever_used(ledger: Ledger, path: Path, raw: Raw):
    fill(ledger, 12)
    conn = raw(path)
    drop_triggers(conn)
    conn.execute("DELETE FROM entries WHERE id > 10")
    result = ledger.verify()
    assert result.first_bad == 11
    assert "entries 11..12 are missing (the end of the ledger was cut off)" in result.problem


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE entries SET detail = x'00ff' WHERE id = 7",  # a blob
        "UPDATE entries SET agent = CAST(x'ff' AS TEXT) WHERE id = 7",  # text that is not UTF-8
        "UPDATE entries SET duration_ms = 'soon' WHERE id = 7",
        "UPDATE entries SET ts = 5 WHERE id = 7",
    ],
)
def test_a_value_of_the_wrong_type_is_caught(ledger: Ledger, path: Path, edit: str, raw: Raw):
    fill(ledger, 20)
    conn = raw(path)
    drop_triggers(conn)
    conn.execute(edit)
    result = ledger.verify()
    assert (result.first_bad, result.entries) == (7, 6)


@pytest.mark.parametrize(
    "json_object",
    [
        pytest.param(ledger_verify.json_object, id="built in Python"),
        pytest.param(
            lambda *pairs: json.dumps(dict(zip(pairs[::2], pairs[1::2], strict=True))),
            id="spaced differently",
        ),
    ],
)
def test_the_chain_is_checked_the_defining_way_whatever_json_sqlite_builds(
    ledger: Ledger, path: Path, json_object: Callable[..., str], raw: Raw
):
    fill(ledger, 40)
    conn = raw(path)
    conn.create_function("json_object", -1, json_object)
    assert ledger_verify.walk_chain(conn) == (40, 40, ledger.verify().head, None, "")
    drop_triggers(conn)
    conn.execute("UPDATE entries SET tool = 'payout' WHERE id = 33")
    assert ledger_verify.walk_chain(conn)[3] == 33


# -- failures -----------------------------------------------------------------------------------


def test_a_locked_ledger_makes_record_decision_unavailable_within_the_bound(path: Path, raw: Raw):
    with Ledger.open(path, busy_timeout=0.2) as ledger:
        holder = raw(path)
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable, match="locked by another writer"):
            ledger.record_decision(record())
        assert time.monotonic() - started < 2.0
        holder.execute("ROLLBACK")
        ledger.record_decision(record())  # the connection is usable again
        assert ledger.verify().ok


def test_a_thread_waiting_for_another_thread_of_the_process_is_bounded_too(path: Path):
    with Ledger.open(path, busy_timeout=0.2) as ledger, ThreadPoolExecutor(1) as pool:
        with ledger._transaction():
            started = time.monotonic()
            error = pool.submit(ledger.record_decision, record()).exception(timeout=30)
            assert time.monotonic() - started < 2.0
        assert isinstance(error, LedgerUnavailable)
        ledger.record_decision(record())
        assert ledger.last_id() == 1


def test_writing_through_a_read_only_connection_is_unavailable(ledger: Ledger, path: Path):
    fill(ledger, 2)
    with Ledger.open_readonly(path) as reader, pytest.raises(LedgerUnavailable, match="read-only"):
        reader.record_decision(record())


def test_a_query_only_database_makes_every_write_unavailable(ledger: Ledger):
    ledger._conn.execute("PRAGMA query_only = ON")
    with pytest.raises(LedgerUnavailable, match="read-only"):
        ledger.record_decision(record())
    with pytest.raises(LedgerUnavailable):
        ledger.record_outcome(uuid.uuid4().hex, "ok", 1)
    with pytest.raises(LedgerUnavailable):
        ledger.record_event("pin", {"tool": "refund"})


def kinds(raw_conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return raw_conn.execute("SELECT kind, call_id FROM entries ORDER BY id").fetchall()


def test_a_deferred_outcome_rides_on_the_next_write_in_front_of_it(ledger: Ledger, path: Path, raw: Raw):
    first, second = record(), record()
    ledger.record_decision(first)
    ledger.record_outcome(first.call_id, "ok", 12.5, defer=True)
    assert ledger.deferred == 1
    assert kinds(raw(path)) == [("decision", first.call_id)]  # not in the file yet
    ledger.record_decision(second)
    assert ledger.deferred == 0
    assert kinds(raw(path)) == [
        ("decision", first.call_id),
        ("outcome", first.call_id),
        ("decision", second.call_id),
    ]
    (call,) = ledger.invocations(limit=1, until_id=1)
    assert (call.outcome, call.duration_ms) == ("ok", 12.5)
    assert ledger.verify().ok


def test_deferred_outcomes_are_committed_by_flush_and_by_close(path: Path, raw: Raw):
    ledger = Ledger.open(path)
    calls = [record() for _ in range(3)]
    for rec in calls:
        ledger.record_decision(rec)
    ledger.record_outcome(calls[0].call_id, "ok", 1, defer=True)
    ledger.flush()
    assert ledger.deferred == 0
    ledger.flush()  # nothing left: no transaction, no error
    ledger.record_outcome(calls[1].call_id, "error", 2, defer=True)
    ledger.record_outcome(calls[2].call_id, "timeout", 3, "took too long", defer=True)
    ledger.close()
    with Ledger.open_readonly(path) as reader:
        assert [(c.outcome, c.outcome_detail) for c in reader.invocations()] == [
            ("ok", None),
            ("error", None),
            ("timeout", "took too long"),
        ]
        assert reader.verify().ok


def test_deferred_outcomes_survive_a_failed_transaction_and_land_once(ledger: Ledger, path: Path, raw: Raw):
    rec = record()
    ledger.record_decision(rec)
    ledger.record_outcome(rec.call_id, "ok", 1, defer=True)
    ledger._conn.execute("PRAGMA query_only = ON")
    with pytest.raises(LedgerUnavailable):
        ledger.record_decision(record())
    with pytest.raises(LedgerUnavailable):
        ledger.flush()
    assert ledger.deferred == 1
    ledger._conn.execute("PRAGMA query_only = OFF")
    ledger.flush()
    ledger.flush()
    assert kinds(raw(path)) == [("decision", rec.call_id), ("outcome", rec.call_id)]
    assert ledger.verify().ok


def test_a_deferred_outcome_is_checked_when_recorded(ledger: Ledger):
    with pytest.raises(ValueError, match="outcome must be one of"):
        ledger.record_outcome(uuid.uuid4().hex, "fine", 1, defer=True)
    with pytest.raises(ValueError, match="finite"):
        ledger.record_outcome(uuid.uuid4().hex, "ok", float("nan"), defer=True)
    with pytest.raises(ValueError, match=">= 0"):
        ledger.record_outcome(uuid.uuid4().hex, "ok", -1.5, defer=True)
    assert ledger.deferred == 0


def test_a_full_disk_makes_record_decision_unavailable(ledger: Ledger, path: Path):
    fill(ledger, 2)
    pages = ledger._conn.execute("PRAGMA page_count").fetchone()[0]
    ledger._conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(LedgerUnavailable, match="disk is full"):
        ledger.record_decision(record(arguments={"blob": "x" * 100_000}))
    assert ledger.verify().ok


def test_a_closed_ledger_is_unavailable(path: Path):
    ledger = Ledger.open(path)
    ledger.close()
    with pytest.raises(LedgerUnavailable):
        ledger.record_decision(record())


def test_a_reader_works_while_a_writer_holds_the_write_lock(ledger: Ledger, path: Path):
    fill(ledger, 4)
    with Ledger.open_readonly(path) as reader, ledger._transaction() as conn:
        ledger._append(conn, {"kind": "policy", "payload": "{}"}, None)
        assert len(reader.invocations()) == 2
        assert reader.verify().ok


def test_a_budget_catch_up_reads_only_the_new_rows_however_long_the_history(ledger: Ledger):
    """The per-call budget query must cost O(new rows): counted in SQLite VM steps, not time."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    def catch_up_cost() -> int:
        nonlocal steps
        last = ledger.last_id()
        ledger.record_decision(record())
        steps = 0
        ledger._conn.set_progress_handler(count, 10)
        try:
            rows = ledger.peek(lambda w: w.allowed("billing", "refund", after_id=last))
        finally:
            ledger._conn.set_progress_handler(None, 0)
        assert len(rows) == 1
        return steps

    fill(ledger, 50)
    short = catch_up_cost()
    fill(ledger, 3000)
    long = catch_up_cost()
    assert long <= short + 5, (short, long)


def test_a_background_checkpoint_copies_the_log_into_the_file_and_stops_at_close(path: Path):
    # Commits never pay for a checkpoint: a thread copies the write-ahead log into the ledger file.
    import threading

    with Ledger.open(path) as ledger:
        ledger.checkpoint_in_background(every=0.05)
        fill(ledger, 200)
        size = path.stat().st_size
        deadline = time.monotonic() + 10
        while path.stat().st_size == size and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.stat().st_size > size
        assert ledger._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == BACKSTOP_PAGES
        assert ledger.verify().ok
    assert not [t for t in threading.enumerate() if t.name == "ledger-checkpoint"]


def test_malformed_records_are_caller_bugs(ledger: Ledger):
    with pytest.raises(ValueError, match="decision"):
        ledger.record_decision(record("maybe"))
    with pytest.raises(ValueError, match="not JSON"):
        ledger.record_decision(record(arguments={"x": float("nan")}))
    with pytest.raises(ValueError, match="time zone"):
        ledger.record_decision(record(), ts=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="outcome"):
        ledger.record_outcome("c", "fine", 1)
    with pytest.raises(ValueError, match="finite"):
        ledger.record_outcome("c", "ok", float("inf"))
    with pytest.raises(ValueError, match="event kind"):
        ledger.record_event("decision", {})
    assert ledger.last_id() == 0


def test_a_reused_call_id_cannot_record_a_second_decision(ledger: Ledger):
    rec = record()
    ledger.record_decision(rec)
    with pytest.raises(LedgerUnavailable, match="UNIQUE"):
        ledger.record_decision(rec)


def test_lone_surrogates_are_stored_as_visible_escapes(ledger: Ledger):
    ledger.record_decision(record(tool="bad\ud800name", arguments={"s": "\udcff"}))
    (inv,) = ledger.invocations()
    assert inv.tool == "bad\\ud800name"
    assert inv.arguments == {"s": "\udcff"}
    assert ledger.verify().ok


# -- what a refused call can make large ------------------------------------------------------------

BIG = {"note": "ü" * 5000}  # 10,013 bytes of canonical JSON, under 8 KiB of characters


def canonical_bytes(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize(
    "arguments",
    [
        {"note": "x" * 3 * 1024 * 1024},
        BIG,
        {"items": list(range(3000))},
        {"nested": {"a": [{"b": "y" * 9000}]}},
    ],
    ids=["3-mib-string", "multibyte-over-8-kib-in-bytes", "long-list", "nested"],
)
def test_a_refused_call_over_8_kib_records_its_digest_size_and_a_bounded_preview(
    ledger: Ledger, path: Path, arguments: dict[str, object]
):
    ledger.record_decision(record("deny", arguments=arguments, reason="invalid_arguments"))
    (inv,) = ledger.invocations()
    data = canonical_bytes(arguments)
    assert inv.arguments == {
        "$truncated": {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "preview": data.decode()[:512],
        }
    }
    assert len(json.dumps(inv.arguments).encode()) < 4 * 1024
    assert path.stat().st_size + Path(f"{path}-wal").stat().st_size < 256 * 1024
    assert ledger.verify().ok


def test_a_refused_call_of_exactly_8_kib_is_recorded_whole_and_one_byte_more_is_not(ledger: Ledger):
    exact = {"s": "x" * (8192 - len(canonical_bytes({"s": ""})))}
    over = {"s": exact["s"] + "x"}
    assert len(canonical_bytes(exact)) == 8192
    for arguments in (exact, over):
        ledger.record_decision(record("deny", arguments=arguments))
    whole, cut = ledger.invocations()
    assert whole.arguments == exact
    assert isinstance(cut.arguments, dict)
    assert cut.arguments["$truncated"]["bytes"] == 8193


def test_an_allowed_call_keeps_its_whole_arguments_however_large(ledger: Ledger):
    arguments = {"note": "x" * 100_000}
    ledger.record_decision(record(arguments=arguments))
    assert ledger.invocations()[0].arguments == arguments


@pytest.mark.parametrize(
    "forged",
    [
        {"$truncated": {"sha256": "0" * 64, "bytes": 3, "preview": "{}"}},
        {"$truncated": 1, "amount": 5},
    ],
    ids=["the-whole-form", "the-key-beside-others"],
)
def test_a_small_refused_call_cannot_forge_the_truncated_form(ledger: Ledger, forged: dict[str, object]):
    ledger.record_decision(record("deny", arguments=forged))
    (inv,) = ledger.invocations()
    data = canonical_bytes(forged)
    assert inv.arguments == {
        "$truncated": {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "preview": data.decode(),
        }
    }


def test_recorded_details_are_bounded_for_decisions_and_outcomes(ledger: Ledger):
    allowed = record()
    ledger.record_decision(allowed)
    ledger.record_outcome(allowed.call_id, "upstream_error", 1.0, "e" * 50_000)
    ledger.record_decision(record("deny", detail=f"{'k' * 50_000} must be of type integer"))
    done, refused = ledger.invocations()
    for inv in (done, refused):
        detail = inv.to_json()["detail"]
        assert isinstance(detail, str)
        assert len(detail) == 1024
        assert detail.endswith("…")
    assert ledger.verify().ok


# -- queries ------------------------------------------------------------------------------------


def test_invocations_join_the_outcome_and_keep_an_unfinished_call_with_a_null_outcome(ledger: Ledger):
    done, interrupted, denied = record(), record(), record("deny", reason="limit_exceeded", detail="amount")
    for rec in (done, interrupted, denied):
        ledger.record_decision(rec, ts=T0)
    ledger.record_outcome(
        done.call_id, "error", 41.5, "upstream returned isError", ts=T0 + timedelta(seconds=1)
    )
    ledger.record_outcome(done.call_id, "ok", 99)  # a second outcome never replaces the first
    got = {inv.call_id: inv for inv in ledger.invocations()}
    assert [inv.call_id for inv in ledger.invocations()] == [
        done.call_id,
        interrupted.call_id,
        denied.call_id,
    ]
    assert (got[done.call_id].outcome, got[done.call_id].duration_ms) == ("error", 41.5)
    assert got[done.call_id].to_json()["detail"] == "upstream returned isError"
    assert (got[interrupted.call_id].outcome, got[interrupted.call_id].duration_ms) == (None, None)
    assert got[denied.call_id].to_json() == {
        "id": 3,
        "call_id": denied.call_id,
        "ts": "2025-05-01T10:00:00.000000Z",
        "agent": "support-bot",
        "session": None,
        "method": "tools/call",
        "server": "billing",
        "tool": "refund",
        "arguments": {"amount": 40},
        "decision": "deny",
        "reason": "limit_exceeded",
        "detail": "amount",
        "outcome": None,
        "duration_ms": None,
        "policy_hash": POLICY,
        "credential": None,
        "name": None,
    }


def test_invocations_filter_and_limit_to_the_most_recent_oldest_first(ledger: Ledger):
    recs = [
        record(agent="support-bot"),
        record("deny", agent="finance-bot", tool="payout"),
        record(agent="finance-bot", server=None, tool="nope"),
        record(agent="support-bot", tool="lookup_order"),
    ]
    for rec in recs:
        ledger.record_decision(rec)
    ids = [inv.call_id for inv in ledger.invocations(limit=2)]
    assert ids == [recs[2].call_id, recs[3].call_id]
    assert [i.call_id for i in ledger.invocations(where=Filter(agent="finance-bot"))] == [
        recs[1].call_id,
        recs[2].call_id,
    ]
    assert [i.call_id for i in ledger.invocations(where=Filter(tool="billing.payout"))] == [recs[1].call_id]
    assert [i.call_id for i in ledger.invocations(where=Filter(tool="nope"))] == [recs[2].call_id]
    assert [i.call_id for i in ledger.invocations(where=Filter(decision="deny"))] == [recs[1].call_id]
    assert [i.call_id for i in ledger.invocations(where=Filter(server="billing", agent="support-bot"))] == [
        recs[0].call_id,
        recs[3].call_id,
    ]
    assert [i.call_id for i in ledger.invocations(where=Filter(reason="limit_exceeded"))] == [recs[1].call_id]
    assert len(ledger.invocations(where=Filter(outcome="none"))) == 4  # none has an outcome yet
    assert ledger.invocations(where=Filter(outcome="ok")) == []
    assert ledger.invocations(where=Filter(since="2999-01-01T00:00:00.000000Z")) == []
    assert len(ledger.invocations(where=Filter(until="2999-01-01T00:00:00.000000Z"))) == 4
    assert [i.call_id for i in ledger.invocations(after_id=2, until_id=3)] == [recs[2].call_id]


def test_events_are_recorded_with_canonical_payloads(ledger: Ledger, path: Path, raw: Raw):
    entry_id = ledger.record_event("pin", {"z": 1, "a": "é"}, POLICY, server="billing", tool="refund")
    ledger.record_event("approval", {"id": "ap1"}, agent="support-bot", call_id="c1")
    (pin,) = ledger.events("pin", server="billing")
    assert (pin.id, pin.payload, pin.tool, pin.policy_hash) == (
        entry_id,
        {"z": 1, "a": "é"},
        "refund",
        POLICY,
    )
    assert raw(path).execute("SELECT payload FROM entries WHERE id = 1").fetchone() == ('{"a":"é","z":1}',)
    assert [e.agent for e in ledger.events("approval")] == ["support-bot"]
    assert ledger.invocations() == []


def test_stats_count_by_agent_tool_decision_reason_and_outcome(ledger: Ledger):
    old = record(agent="old-bot")
    ledger.record_decision(old, ts=T0 - timedelta(days=2))
    a, b = record(), record(tool="lookup_order")
    for rec in (
        a,
        b,
        record("deny", reason="limit_exceeded"),
        record("deny", agent="x", server=None, tool="t"),
    ):
        ledger.record_decision(rec, ts=T0)
    ledger.record_outcome(a.call_id, "ok", 3)
    stats = ledger.stats(T0 - timedelta(days=1))
    assert stats == {
        "since": "2025-04-30T10:00:00.000000Z",
        "invocations": 4,
        "by_agent": {"support-bot": 3, "x": 1},
        "by_tool": {"billing.refund": 2, "billing.lookup_order": 1, "t": 1},
        "by_decision": {"allow": 2, "deny": 2},
        "by_reason": {"limit_exceeded": 2},
        "by_outcome": {"none": 1, "ok": 1},
        "duration_ms": {"billing.refund": {"count": 1, "p50": 3.0, "p95": 3.0}},
    }
    assert ledger.stats(None)["by_agent"]["old-bot"] == 1


# -- the CLI view -------------------------------------------------------------------------------


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mcp-guard")
    add_ledger_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["ledger", *argv])


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


HOSTILE = {
    "note": "ok\n2025-05-01T10:00:00.000Z support-bot billing.refund allow ok 1ms {}",
    "ansi": "\x1b[2J\x1b[31mred",
    "sep": "a\u2028b\u2029c\x85d\r",
    "bidi": "\u202egnp.exe",
}


def test_tail_escapes_hostile_arguments_so_they_cannot_forge_lines(ledger: Ledger, path: Path):
    ledger.record_decision(record(arguments=HOSTILE, tool="refund\nfake ok 1ms", detail="x\x1b[0m\ny"))
    ledger.record_decision(record("deny", reason="limit_exceeded"))
    for colour in (False, True):
        line = format_line(ledger.invocations()[0], colour=colour)
        assert len(line.splitlines()) == 1
        for raw_char in ("\x1b[2J", "\u202e", "\x85", "\u2028"):
            assert raw_char not in line
        for escaped in (
            "\\n2025-05-01",
            " billing.refund\\nfake\\x20ok\\x201ms ",
            "\\u202e",
            "\\u001b[2J",
            "\\u2028",
            "x\\x1b[0m\\ny",
        ):
            assert escaped in line
    out = io.StringIO()
    assert run_ledger(cli("tail"), path, out) == 0
    assert len(out.getvalue().splitlines()) == 2
    assert "\x1b" not in out.getvalue()


def test_tail_json_prints_one_ascii_object_per_invocation_with_spec_fields(ledger: Ledger, path: Path):
    ledger.record_decision(record(arguments=HOSTILE))
    out = io.StringIO()
    assert run_ledger(cli("tail", "--json"), path, out) == 0
    (line,) = out.getvalue().splitlines()
    assert line.isascii()
    obj = json.loads(line)
    assert obj["arguments"] == HOSTILE
    spec = "call_id ts agent session server tool arguments decision reason detail outcome duration_ms"
    assert set(spec.split()) <= set(obj)
    assert json_line(ledger.invocations()[0]) == line


def test_tail_colours_only_a_terminal(ledger: Ledger, path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    ledger.record_decision(record("deny", reason="limit_exceeded"))
    plain, tty = io.StringIO(), Tty()
    run_ledger(cli("tail"), path, plain)
    run_ledger(cli("tail"), path, tty)
    assert "\x1b[" not in plain.getvalue()
    assert "\x1b[31mdeny\x1b[0m limit_exceeded" in tty.getvalue()


def test_tail_filters_and_counts(ledger: Ledger, path: Path):
    for i in range(5):
        ledger.record_decision(record("deny" if i % 2 else "allow", agent=f"bot-{i % 2}"))
    out = io.StringIO()
    run_ledger(
        cli("tail", "-n", "1", "--agent", "bot-0", "--decision", "allow", "--tool", "refund"), path, out
    )
    assert out.getvalue().count("\n") == 1
    assert " bot-0 billing.refund allow - - " in out.getvalue()


def test_a_human_line_shows_time_agent_tool_decision_outcome_ms_and_arguments(ledger: Ledger):
    rec = record(arguments={"currency": "EUR", "amount": 40})
    ledger.record_decision(rec, ts=T0)
    ledger.record_outcome(rec.call_id, "ok", 12.4)
    line = format_line(ledger.invocations()[0])
    assert (
        line
        == '2025-05-01T10:00:00.000Z support-bot billing.refund allow ok 12ms {"amount":40,"currency":"EUR"}'
    )


def test_printable_keeps_ordinary_text_and_escapes_the_rest():
    assert printable("plain text, ünïcode ✓") == "plain text, ünïcode ✓"
    assert printable("a\nb\tc\x00\x1b\x7f\u200b\U000e0041") == "a\\nb\\tc\\x00\\x1b\\x7f\\u200b\\U000e0041"


def test_verify_command_prints_ok_or_the_first_bad_entry(ledger: Ledger, path: Path, raw: Raw):
    fill(ledger, 6)
    out = io.StringIO()
    assert run_ledger(cli("verify"), path, out) == 0
    assert out.getvalue().startswith("ok: 6 entries")
    conn = raw(path)
    drop_triggers(conn)
    conn.execute("UPDATE entries SET agent = 'finance-bot' WHERE id = 3")
    out = io.StringIO()
    assert run_ledger(cli("verify"), path, out) == 1
    assert out.getvalue().startswith("bad: entry 3: content does not match")


def test_stats_command_prints_readable_counts(ledger: Ledger, path: Path):
    ledger.record_decision(record())
    ledger.record_decision(record("deny", agent="finance-bot", reason="budget_exhausted"))
    out = io.StringIO()
    assert run_ledger(cli("stats", "--since", "1d"), path, out) == 0
    text = out.getvalue()
    first, *rest = text.splitlines()
    assert first.startswith("invocations since ")
    assert first.endswith(": 2")
    assert rest[:3] == ["decision: allow 1, deny 1", "reason: budget_exhausted 1", "outcome: none 1"]
    assert "  finance-bot  1" in rest
    assert "  billing.refund  2" in rest


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("15m", 900), ("1h", 3600), ("1d", 86400)])
def test_durations_parse(text: str, seconds: int):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "1", "1w", "-1d", "0s", "1.5h", " 1d"])
def test_bad_durations_are_usage_errors(text: str):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_a_missing_ledger_file_is_exit_1_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    missing = tmp_path / "nothing.db"
    assert run_ledger(cli("tail"), missing, io.StringIO()) == 1
    assert capsys.readouterr().err == f"mcp-guard: {missing}: no ledger file\n"
    assert not missing.exists()


# -- following ----------------------------------------------------------------------------------


def ids(invocations: list[Invocation]) -> list[tuple[str, str | None]]:
    return [(inv.call_id, inv.outcome) for inv in invocations]


class Following:
    """Drives the CLI's Follower from the engine, as `tail -f` drives it from a store's `follow`."""

    def __init__(self, reader: Ledger, where: Filter) -> None:
        self.reader, self.where, self.follower, self.after = reader, where, Follower(), 0

    def start(self, n: int) -> list[Invocation]:
        self.after = self.reader.last_id()
        shown = self.reader.invocations(limit=n, until_id=self.after, where=self.where) if n else []
        return self.follower.begin(shown)

    def poll(self, now: float) -> list[Invocation]:
        self.after, changed = self.reader.updates(self.after, where=self.where)
        return self.follower.take(changed, now)


def test_follow_prints_a_denial_at_once_and_an_allowed_call_when_its_outcome_lands(
    ledger: Ledger, path: Path
):
    with Ledger.open_readonly(path) as reader:
        follower = Following(reader, Filter())
        assert follower.start(10) == []
        allowed, denied = record(), record("deny")
        ledger.record_decision(allowed)
        ledger.record_decision(denied)
        assert ids(follower.poll(0.0)) == [(denied.call_id, None)]
        assert follower.poll(1.0) == []
        ledger.record_outcome(allowed.call_id, "ok", 5)
        assert ids(follower.poll(1.2)) == [(allowed.call_id, "ok")]
        assert follower.poll(10.0) == []


def test_follow_prints_a_call_in_flight_after_three_seconds_and_again_when_it_ends(
    ledger: Ledger, path: Path
):
    with Ledger.open_readonly(path) as reader:
        follower = Following(reader, Filter())
        follower.start(10)
        slow = record()
        ledger.record_decision(slow)
        assert follower.poll(100.0) == []
        assert follower.poll(102.9) == []
        assert ids(follower.poll(103.0)) == [(slow.call_id, None)]
        assert follower.poll(104.0) == []
        ledger.record_outcome(slow.call_id, "timeout", 30000)
        assert ids(follower.poll(133.0)) == [(slow.call_id, "timeout")]


def test_follow_starts_with_the_last_n_and_reprints_those_that_were_still_open(ledger: Ledger):
    finished, open_call = record(), record()
    ledger.record_decision(finished)
    ledger.record_outcome(finished.call_id, "ok", 1)
    ledger.record_decision(open_call)
    follower = Following(ledger, Filter())
    assert ids(follower.start(10)) == [(finished.call_id, "ok"), (open_call.call_id, None)]
    ledger.record_outcome(open_call.call_id, "cancelled", 2)
    assert ids(follower.poll(0.0)) == [(open_call.call_id, "cancelled")]


def test_follow_applies_the_filters(ledger: Ledger):
    follower = Following(ledger, Filter(agent="finance-bot", decision="deny"))
    follower.start(0)
    mine = record("deny", agent="finance-bot")
    ledger.record_decision(record("deny"))
    ledger.record_decision(record(agent="finance-bot"))
    ledger.record_decision(mine)
    assert ids(follower.poll(0.0)) == [(mine.call_id, None)]


# -- redaction: every row the ledger appends ------------------------------------------------------

LEAKED = "sk_test_ledgerleak0123456789"


def test_every_row_appended_is_redacted_whoever_built_it_and_the_chain_still_verifies(
    ledger: Ledger, path: Path
):
    ledger.redactor = Scrubber([LEAKED])
    b64 = base64.b64encode(f"KEY={LEAKED}".encode()).decode()
    unknown = replace(record("deny", server=None, tool=f"x{LEAKED}", detail=f"Unknown tool: x{LEAKED}"))
    ledger.record_decision(replace(unknown, session=f"s-{b64}", arguments={LEAKED: [b64]}))
    allowed = record(arguments={"note": "Bearer abcdefghijklmnop"})
    ledger.record_decision(
        allowed, check=lambda window: window.append(ApprovalEvent(payload={"a": b64})) or allowed
    )
    ledger.record_outcome(allowed.call_id, "error", 3.0, f"upstream said {LEAKED}", defer=True)
    ledger.record_event("policy", {"reason": f"bad {LEAKED}"}, POLICY, agent="support-bot")
    ledger.flush()
    data = b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())
    for leaked in (LEAKED, b64, "abcdefghijklmnop"):
        assert leaked.encode() not in data, leaked
    rows = [
        dict(zip(HASHED_COLUMNS, row, strict=False))
        for row in ledger._conn.execute(f"SELECT {', '.join(HASHED_COLUMNS)} FROM entries ORDER BY id")
    ]
    assert [r["kind"] for r in rows] == ["decision", "decision", "approval", "outcome", "policy"]
    assert rows[0]["tool"] == "x[REDACTED]"
    assert rows[0]["session"] == "s-S0VZPX[REDACTED]k="  # "KEY=" and the tail's bits are left
    assert json.loads(rows[0]["arguments"]) == {"[REDACTED]": ["S0VZPX[REDACTED]k="]}
    assert rows[3]["detail"] == "upstream said [REDACTED]"
    assert ledger.verify().ok


def test_a_resolved_tools_name_and_the_agent_are_recorded_as_named_for_budgets_to_count_by(ledger: Ledger):
    ledger.redactor = Scrubber([LEAKED])
    ledger.record_decision(record(agent="sk-bot", tool="sk_live_abcdefghijklmnop", detail=None))
    (row,) = ledger.invocations()
    assert (row.agent, row.tool) == ("sk-bot", "sk_live_abcdefghijklmnop")


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE entries SET method = NULL WHERE id = 1",  # a decision passed off as written before schema 2
        "UPDATE entries SET method = 'resources/read' WHERE id = 1",
        "UPDATE entries SET method = 'tools/call' WHERE id = 2",  # an outcome given a method
    ],
)
def test_the_method_is_covered_by_the_hash_whichever_way_it_is_edited(
    ledger: Ledger, path: Path, edit: str, raw: Raw
):
    rec = record()
    ledger.record_decision(rec)
    ledger.record_outcome(rec.call_id, "ok", 1)
    assert ledger.verify().ok
    conn = raw(path)
    drop_triggers(conn)
    conn.execute(edit)
    assert ledger.verify().first_bad == int(edit.rsplit("= ", 1)[1])
