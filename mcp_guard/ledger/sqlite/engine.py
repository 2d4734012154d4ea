"""The SQLite ledger engine: one connection to the file, appends in transactions serialised by
BEGIN IMMEDIATE (so ids are commit-ordered, which the budget tallies rely on), deferred outcomes,
and the queries behind `mcp-guard ledger`. Synchronous (stdlib sqlite3, sqlite-utils for the
schema); the store (store.py) drives it from the event loop. Imports nothing from mcp_guard but
errors, the ledger's values and its siblings in ledger.sqlite; only ledger.sqlite imports this."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from sqlite_utils import Database

from mcp_guard.errors import LedgerError, LedgerUnavailable
from mcp_guard.ledger.base import ALL, Filter, Invocation
from mcp_guard.ledger.chain import COLUMNS, ZERO_HASH, VerifyResult, entry_hash
from mcp_guard.ledger.entries import (
    CallRecord,
    Redactor,
    decision_fields,
    event_fields,
    format_ts,
    outcome_fields,
    redact,
)
from mcp_guard.ledger.sqlite import queries, schema
from mcp_guard.ledger.sqlite.queries import Event
from mcp_guard.ledger.sqlite.schema import BACKSTOP_PAGES, CHECKPOINT_EVERY
from mcp_guard.ledger.sqlite.tallies import Tallies
from mcp_guard.ledger.sqlite.transaction import Transaction
from mcp_guard.ledger.sqlite.verify import verify
from mcp_guard.ledger.sqlite.window import SQLiteWindow

# SQL is only ever built from these constants; every value is a bound parameter.
_INSERT = (
    f"INSERT INTO entries ({', '.join(COLUMNS)}, entry_hash) VALUES ({', '.join('?' * (len(COLUMNS) + 1))})"  # noqa: S608
)
_PREV, _TS = COLUMNS.index("prev_hash"), COLUMNS.index("ts")


Check = Callable[[SQLiteWindow], CallRecord]
T = TypeVar("T")


class Ledger:
    """One connection to the ledger file, shared by threads (calls are serialised)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, busy_timeout: float) -> None:
        self._conn = conn
        self._select = queries.invocation_select(conn)  # a reader of a file not yet migrated
        self._path = path  # as given, for messages
        self._file = path.absolute()  # for connections opened later, whatever the cwd by then
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._shortened = False  # the connection's busy_timeout is below the full bound
        self._checkpointer: schema.Checkpointer | None = None
        # Outcomes recorded with defer=True, committed by the next write transaction (or flush).
        # Appended from any thread (list.append is atomic); removed only under the lock, once
        # committed.
        self._deferred: list[tuple[dict[str, object], str]] = []
        self._head: str | None = None  # the chain head within the write transaction in progress
        self._tallies = Tallies()  # budget totals, caught up under the lock in each transaction
        self.redactor: Redactor | None = None
        """Applied to every row appended, whoever built it (the guard sets its policy's scrubber)."""

    @classmethod
    def open(
        cls, path: Path, durability: Literal["normal", "full"] = "normal", *, busy_timeout: float = 2.0
    ) -> Self:
        """Open for appending, creating or migrating the file; LedgerError if that fails."""
        synchronous = {"normal": 1, "full": 2}.get(durability)
        if synchronous is None:
            msg = f"durability must be 'normal' or 'full', not {durability!r}"
            raise ValueError(msg)
        path = Path(path)
        conn = schema.connect(path, str(path), busy_timeout, uri=False)
        with schema.closing_on_error(conn, path, busy_timeout):
            schema.configure(conn, path, synchronous, busy_timeout)
            schema.migrate(conn, path)
        return cls(conn, path, busy_timeout)

    @classmethod
    def open_readonly(cls, path: Path, *, busy_timeout: float = 2.0) -> Self:
        """Open for reading only (works while guards append, and on a file of an older schema that
        no guard has migrated yet); every write raises LedgerUnavailable."""
        path = Path(path)
        if not path.is_file():
            msg = f"{path}: no ledger file"
            raise LedgerError(msg)
        conn = schema.connect(path, schema.readonly_uri(path), busy_timeout, uri=True)
        with schema.closing_on_error(conn, path, busy_timeout):
            conn.execute("PRAGMA trusted_schema = OFF")
            db = Database(conn, recursive_triggers=False, execute_plugins=False)
            schema.refuse_newer(db, path)
            if schema.MIGRATIONS.pending(db) and not schema.MIGRATIONS.applied(db):
                msg = f"{path}: not an mcp-guard ledger, or one no guard has opened yet"
                raise LedgerError(msg)
        return cls(conn, path, busy_timeout)

    @property
    def path(self) -> Path:
        return self._path

    def checkpoint_in_background(self, every: float = CHECKPOINT_EVERY) -> None:
        """For a long-lived writer (the guard): checkpoint from a thread every `every` seconds.
        SQLite's own checkpoint stays as a backstop, at a threshold it only reaches if the
        thread falls far behind."""
        if self._checkpointer is None:
            with self._lock:
                self._conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
            self._checkpointer = schema.Checkpointer(self._file, every)

    def close(self) -> None:
        """Commit the deferred outcomes and close; LedgerUnavailable (after closing) if they
        could not be committed."""
        try:
            self.flush()
        finally:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
            # Bounded: a transaction cut short between taking the lock and its `try` (Ctrl-C in
            # `ledger tail -f`) could have left it held, and closing must not hang on it.
            held = self._lock.acquire(timeout=self._busy_timeout)
            try:
                self._conn.close()
            finally:
                if held:
                    self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing: each method commits before it returns, or raises LedgerUnavailable --------------

    def record_decision(
        self, rec: CallRecord, ts: datetime | None = None, *, check: Check | None = None
    ) -> CallRecord:
        """Commit a decision; ValueError for a record that is malformed (a caller bug).

        With `check`, the decision is made inside the write transaction: `check(window)` reads the
        history (budgets, approvals) and returns the record to commit, and any events it queues are
        appended after it. No other process can append in between, so concurrent calls cannot
        overspend a budget or use one approval twice."""
        if check is None:
            self._record(decision_fields(rec), ts)
            return rec
        with self._transaction() as conn:
            return self._settle(conn, rec, check, ts)

    def record_decisions(
        self, batch: Sequence[tuple[CallRecord, Check | None]]
    ) -> list[CallRecord | Exception]:
        """Commit decisions of concurrent calls in one transaction (group commit), settled in turn as
        `record_decision` settles one, each seeing those before it: one BEGIN and COMMIT, and each
        page written once, for all of them. Each comes back as its record or, if its check raised
        or its call id was used before, that exception: it is left out and the others commit. Any
        other SQLite error fails them all (LedgerUnavailable), as it fails one."""
        results: list[CallRecord | Exception] = []
        with self._transaction() as conn:
            for rec, check in batch:
                if len(batch) == 1 and not self._deferred:  # alone: its failure fails nothing else
                    results.append(self._settle(conn, rec, check, None))
                    break
                head = self._head
                conn.execute("SAVEPOINT decision")
                try:
                    results.append(self._settle(conn, rec, check, None))
                except Exception as exc:  # this decision alone is left out ...
                    if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
                        raise  # ... unless the ledger itself failed: then all of them are
                    conn.execute("ROLLBACK TO decision")
                    self._head = head
                    if isinstance(exc, sqlite3.IntegrityError):  # a call id used twice
                        msg = f"{self._path}: {schema.describe(exc, self._busy_timeout)}"
                        results.append(LedgerUnavailable(msg))
                    else:
                        results.append(exc)
                conn.execute("RELEASE decision")
        return results

    def _settle(
        self, conn: sqlite3.Connection, rec: CallRecord, check: Check | None, ts: datetime | None
    ) -> CallRecord:
        window = SQLiteWindow(conn, ts or datetime.now(UTC), self._tallies)
        if check is not None:
            rec = check(window)
        stamp = format_ts(window.now)
        self._append(conn, decision_fields(rec), stamp)
        for fields in window.queued:
            self._append(conn, fields, stamp)
        return rec

    def hold(self, fn: Callable[[SQLiteWindow], T]) -> T:
        """Run `fn` inside a write transaction and append the events it queues."""
        with self._transaction() as conn:
            window = SQLiteWindow(conn, datetime.now(UTC), self._tallies)
            result = fn(window)
            for fields in window.queued:
                self._append(conn, fields, format_ts(window.now))
        return result

    def peek(self, fn: Callable[[SQLiteWindow], T]) -> T:
        """Run `fn` on one consistent snapshot; what it queues is dropped."""
        with self._read() as conn:
            return fn(SQLiteWindow(conn, datetime.now(UTC), self._tallies))

    def record_outcome(
        self,
        call_id: str,
        outcome: str,
        duration_ms: float,
        detail: str | None = None,
        *,
        ts: datetime | None = None,
        defer: bool = False,
    ) -> None:
        """Commit what became of an allowed call: ok, error, upstream_error, timeout or cancelled.

        With `defer`, the outcome (stamped now) is committed by the next write transaction, in
        front of what that transaction appends, or by `flush`: one transaction per call instead of
        two. Until then a crash loses it, and the call reads as one the guard died in."""
        fields = outcome_fields(call_id, outcome, duration_ms, detail)
        if defer:
            self._deferred.append((fields, format_ts(ts or datetime.now(UTC))))
        else:
            self._record(fields, ts)

    @property
    def deferred(self) -> int:
        """Outcomes recorded with defer=True and not committed yet."""
        return len(self._deferred)

    def flush(self) -> None:
        """Commit the deferred outcomes now; LedgerUnavailable if that fails (they stay deferred)."""
        if self._deferred:
            with self._transaction():
                pass  # the transaction appends them

    def record_event(
        self,
        kind: str,
        payload: dict[str, Any],
        policy_hash: str | None = None,
        *,
        call_id: str | None = None,
        agent: str | None = None,
        server: str | None = None,
        tool: str | None = None,
        ts: datetime | None = None,
    ) -> int:
        """Append a policy, pin or approval entry; returns its id."""
        fields = event_fields(
            kind, payload, policy_hash, call_id=call_id, agent=agent, server=server, tool=tool
        )
        return self._record(fields, ts)

    def record_row(self, fields: Mapping[str, object]) -> int:
        """Append an entry already made into checked columns (an event's `row()`); returns its id."""
        return self._record(fields, None)

    def _record(self, fields: Mapping[str, object], ts: datetime | None) -> int:
        stamp = None if ts is None else format_ts(ts)
        with self._transaction() as conn:
            return self._append(conn, fields, stamp)

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """BEGIN IMMEDIATE .. COMMIT: the write lock is held, so the chain head cannot move meanwhile.
        Deferred outcomes are appended first.

        A check that must be atomic with its append (budgets, pins) reads inside it, then `_append`s.
        """
        return Transaction(self, write=True)

    def _append_deferred(self, conn: sqlite3.Connection) -> int:
        batch = self._deferred[:]
        for fields, stamp in batch:
            self._append(conn, fields, stamp)
        return len(batch)

    def _append(self, conn: sqlite3.Connection, fields: Mapping[str, object], ts: str | None) -> int:
        """Insert one entry chained to the current head; only inside `_transaction`. The one place
        every row passes: it is redacted here, before it is hashed."""
        if self.redactor is not None:
            fields = redact(fields, self.redactor)
        head = self._head
        if head is None:
            row = conn.execute("SELECT entry_hash FROM entries ORDER BY id DESC LIMIT 1").fetchone()
            head = row[0] if row else ZERO_HASH
        values = [fields.get(name) for name in COLUMNS]
        values[_PREV] = head
        values[_TS] = ts or format_ts(datetime.now(UTC))
        self._head = entry_hash(values)
        values.append(self._head)
        return int(conn.execute(_INSERT, values).lastrowid or 0)

    # -- reading: each call reads one consistent snapshot, and raises LedgerError ------------------

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        return Transaction(self, write=False)

    def last_id(self) -> int:
        with self._read() as conn:
            return queries.last_id(conn)

    def invocations(
        self,
        *,
        limit: int | None = None,
        after_id: int | None = None,
        until_id: int | None = None,
        where: Filter = ALL,
    ) -> list[Invocation]:
        """Decisions joined with their first outcome, oldest first; `limit` keeps the most recent;
        the ids bound the decision's id."""
        with self._read() as conn:
            return queries.invocations(
                conn, select=self._select, limit=limit, after_id=after_id, until_id=until_id, where=where
            )

    def updates(self, after_id: int, *, where: Filter = ALL) -> tuple[int, list[Invocation]]:
        """The new last entry id, and the invocations whose decision or outcome came after `after_id`."""
        with self._read() as conn:
            return queries.updates(conn, after_id, select=self._select, where=where)

    def events(
        self, kind: str, *, server: str | None = None, tool: str | None = None, after_id: int | None = None
    ) -> list[Event]:
        """Policy, pin or approval entries of one kind, oldest first."""
        with self._read() as conn:
            return queries.events(conn, kind, server=server, tool=tool, after_id=after_id)

    def stats(self, since: datetime | None = None) -> dict[str, Any]:
        """Counts of invocations by agent, tool, decision and reason, and of allowed ones by outcome."""
        stamp = None if since is None else format_ts(since)
        with self._read() as conn:
            return queries.stats(conn, stamp)

    def verify(self) -> VerifyResult:
        """Recompute the chain in id order, on a read-only connection of its own."""
        conn = schema.connect(self._file, schema.readonly_uri(self._file), self._busy_timeout, uri=True)
        with schema.closing_on_error(conn, self._path, self._busy_timeout):
            conn.execute("BEGIN")
            result = verify(conn)
            conn.execute("COMMIT")
        conn.close()
        return result
