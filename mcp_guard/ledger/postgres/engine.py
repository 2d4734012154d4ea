"""The PostgreSQL ledger engine: one connection per process, appends in transactions that lock the
one-row chain head first (so every replica appends to one chain, ids are commit-ordered, and a
decision's reads cannot change before it commits), deferred outcomes, and the reads behind
`mcp-guard ledger`. Synchronous (psycopg 3), because a decision's settle step reads through the
synchronous `Window`; the store (store.py) runs it in worker threads. A connection the server
dropped is replaced by the next transaction. Imports nothing from mcp_guard but errors, the ledger's
values and its siblings (and the SQLite store's shared queries)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg

from mcp_guard.errors import LedgerError, LedgerUnavailable
from mcp_guard.ledger.base import ALL, Filter, Invocation
from mcp_guard.ledger.chain import COLUMNS, entry_hash
from mcp_guard.ledger.entries import CallRecord, Redactor, decision_fields, format_ts, outcome_fields, redact
from mcp_guard.ledger.postgres import schema
from mcp_guard.ledger.postgres.window import Connection, PostgresWindow
from mcp_guard.ledger.sqlite import queries
from mcp_guard.ledger.sqlite.tallies import Tallies

T = TypeVar("T")
# SQL is only ever built from these constants; every value is a bound parameter.
INSERT = (
    f"INSERT INTO entries (id, {', '.join(COLUMNS)}, entry_hash) "  # noqa: S608
    f"VALUES ({', '.join(['%s'] * (len(COLUMNS) + 2))})"
)
_PREV, _TS = COLUMNS.index("prev_hash"), COLUMNS.index("ts")
_NOTIFY = f"SELECT pg_notify('{schema.CHANNEL}', %s)"
_HEAD = "UPDATE ledger_head SET last_id = %s, entry_hash = %s"
_BEGIN_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
_BEGIN_WRITE = "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT last_id, entry_hash FROM ledger_head FOR UPDATE"


class Engine:
    """One connection to the ledger's database, shared by threads (calls are serialised)."""

    def __init__(self, url: str, where: str, *, full: bool = False, readonly: bool = False) -> None:
        self.url, self.where = url, where
        self._full, self._readonly = full, readonly
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        # Outcomes recorded with defer=True, committed by the next write transaction (or flush);
        # removed only once committed.
        self._deferred: list[tuple[dict[str, object], str]] = []
        self._tallies = Tallies()  # budget totals, caught up under the head lock in each transaction
        self.redactor: Redactor | None = None

    @classmethod
    def open(cls, url: str, where: str, *, full: bool = False, readonly: bool = False) -> Engine:
        """Connect; for appending, create or migrate the schema; for reading, LedgerError when there
        is no ledger there yet."""
        engine = cls(url, where, full=full, readonly=readonly)
        conn = engine._connection()
        try:
            if readonly:
                found = schema.version(conn)
                if found is None:
                    msg = f"{where}: no mcp-guard ledger there yet (no guard has opened it)"
                    raise LedgerError(msg)
                schema.refuse_newer(found, where)
            else:
                schema.migrate(conn, where)
        except psycopg.Error as exc:
            engine.close_connection()
            msg = f"{where}: {schema.describe(exc)}"
            raise LedgerError(msg) from exc
        except BaseException:
            engine.close_connection()
            raise
        return engine

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = schema.connect(self.url, self.where, write=not self._readonly, full=self._full)
        return self._conn

    def close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Commit the deferred outcomes and close; LedgerUnavailable (after closing) if they could not
        be committed."""
        try:
            self.flush()
        finally:
            with self._lock:
                self.close_connection()

    # -- transactions ---------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[_Appender]:
        """BEGIN .. COMMIT under the thread lock. A write locks the chain head first and appends the
        deferred outcomes; any failure rolls back, and a dropped connection is replaced next time."""
        error = LedgerUnavailable if write else LedgerError
        if write and self._readonly:
            msg = f"{self.where}: opened read-only"
            raise LedgerUnavailable(msg)
        with self._lock:
            flushing = 0
            try:
                conn, found = self._begin(write)
                appender = _Appender(self, conn, int(found[0]), str(found[1]))
                if write:
                    flushing = len(self._deferred)
                    for fields, stamp in self._deferred[:flushing]:
                        appender.append(fields, stamp)
                    appender.send()  # before the settle step: it may read them
                yield appender
                with conn.pipeline():  # one round trip: the rows, the head, the notice, the commit
                    if write and appender.appended:
                        appender.send()
                        conn.execute(_HEAD, (appender.last_id, appender.head))
                        conn.execute(_NOTIFY, (str(appender.last_id),))
                    conn.execute("COMMIT")
            except psycopg.Error as exc:
                self._abandon()
                msg = f"{self.where}: {schema.describe(exc)}"
                raise error(msg) from exc
            except LedgerError as exc:  # the server cannot be reached
                self._abandon()
                raise error(str(exc)) from exc
            except BaseException:
                self._abandon()
                raise
            del self._deferred[:flushing]

    def _begin(self, write: bool) -> tuple[psycopg.Connection[Any], tuple[Any, ...]]:
        """BEGIN (and, to write, lock the chain head) in one round trip, on the connection or on a
        new one if the server dropped it (a restart, a failover, an idle timeout, or while waiting
        for the head): nothing was written in this transaction yet, so trying once more is safe."""
        begin = _BEGIN_WRITE if write else _BEGIN_READ
        conn = self._connection()
        try:
            cur = conn.execute(begin)
        except psycopg.OperationalError:
            if not conn.broken:
                raise
            self.close_connection()
            conn = self._connection()
            cur = conn.execute(begin)
        if not write:
            return conn, (0, "")
        cur.nextset()
        return conn, cur.fetchone() or (0, "")

    def _abandon(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            if not conn.broken and not conn.closed:
                conn.execute("ROLLBACK")
                return
        except psycopg.Error:
            pass  # the connection is gone; the first error is the one to report
        self.close_connection()

    # -- writing --------------------------------------------------------------------------------

    def record_decision(
        self, rec: CallRecord, check: Callable[[PostgresWindow], CallRecord] | None = None
    ) -> CallRecord:
        """Commit a decision, made inside the transaction by `check` when given (see the SQLite
        engine's `record_decision`)."""
        with self._transaction(write=True) as tx:
            window = PostgresWindow(Connection(tx.conn), datetime.now(UTC), self._tallies)
            if check is not None:
                rec = check(window)
            stamp = format_ts(window.now)
            tx.append(decision_fields(rec), stamp)
            for fields in window.queued:
                tx.append(fields, stamp)
        return rec

    def hold(self, fn: Callable[[PostgresWindow], T]) -> T:
        with self._transaction(write=True) as tx:
            window = PostgresWindow(Connection(tx.conn), datetime.now(UTC), self._tallies)
            result = fn(window)
            for fields in window.queued:
                tx.append(fields, format_ts(window.now))
        return result

    def peek(self, fn: Callable[[PostgresWindow], T]) -> T:
        with self._transaction(write=False) as tx:
            return fn(PostgresWindow(Connection(tx.conn), datetime.now(UTC), self._tallies))

    def record_outcome(
        self, call_id: str, outcome: str, duration_ms: float, detail: str | None = None, *, defer: bool
    ) -> None:
        fields = outcome_fields(call_id, outcome, duration_ms, detail)
        stamp = format_ts(datetime.now(UTC))
        if defer:
            self._deferred.append((fields, stamp))
            return
        with self._transaction(write=True) as tx:
            tx.append(fields, stamp)

    def record_row(self, fields: Mapping[str, object]) -> None:
        with self._transaction(write=True) as tx:
            tx.append(fields, format_ts(datetime.now(UTC)))

    @property
    def deferred(self) -> int:
        return len(self._deferred)

    def flush(self) -> None:
        if self._deferred:
            with self._transaction(write=True):
                pass  # the transaction appends them

    def import_rows(self, rows: Iterable[Sequence[object]]) -> int:
        """Append entries exactly as another ledger holds them (id, COLUMNS..., entry_hash, in id
        order), into an empty ledger, in one transaction: `ledger copy`. The chain head becomes the
        last of them; the hashes are not recomputed (verify does that)."""
        with self._transaction(write=True) as tx:
            if tx.last_id != 0 or tx.conn.execute("SELECT 1 FROM entries LIMIT 1").fetchone():
                msg = f"{self.where}: not an empty ledger; copy only into a new one"
                raise LedgerError(msg)
            batch: list[Sequence[object]] = []
            for row in rows:
                batch.append(row)
                if len(batch) >= 2000:
                    tx.insert(batch)
                    batch = []
            tx.insert(batch)
        with self._lock, suppress(psycopg.Error):  # fresh statistics for the planner; the owner may
            self._connection().execute("ANALYZE entries")  # (a guard's role may not: it need not)
        return tx.appended

    # -- reading --------------------------------------------------------------------------------

    def read(self, fn: Callable[[Connection], T]) -> T:
        """`fn` on one consistent snapshot, through the shared queries' connection."""
        with self._transaction(write=False) as tx:
            return fn(Connection(tx.conn))

    def read_raw(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self._transaction(write=False) as tx:
            return fn(tx.conn)

    def last_id(self) -> int:
        return self.read(queries.last_id)  # type: ignore[arg-type]

    def invocations(
        self, *, limit: int | None = None, until_id: int | None = None, where: Filter = ALL
    ) -> list[Invocation]:
        return self.read(
            lambda c: queries.invocations(c, limit=limit, until_id=until_id, where=where)  # type: ignore[arg-type]
        )

    def updates(self, after_id: int, *, where: Filter = ALL) -> tuple[int, list[Invocation]]:
        return self.read(lambda c: queries.updates(c, after_id, where=where))  # type: ignore[arg-type]

    def stats(self, since: datetime | None = None) -> dict[str, Any]:
        stamp = None if since is None else format_ts(since)
        return self.read(lambda c: queries.stats(c, stamp))  # type: ignore[arg-type]


class _Appender:
    """What one transaction appends: each row chained to the head it locked, sent in batches."""

    __slots__ = ("appended", "conn", "engine", "head", "last_id", "pending")

    def __init__(self, engine: Engine, conn: psycopg.Connection[Any], last_id: int, head: str) -> None:
        self.engine, self.conn = engine, conn
        self.last_id, self.head = last_id, head
        self.appended = 0
        self.pending: list[Sequence[object]] = []

    def insert(self, rows: Sequence[Sequence[object]]) -> None:
        """Insert whole rows (id, COLUMNS..., entry_hash) as they are; the last becomes the head."""
        if rows:
            self.pending += rows
            self.send()
            self.last_id, self.head = int(rows[-1][0]), str(rows[-1][-1])  # type: ignore[call-overload]
            self.appended += len(rows)

    def append(self, fields: Mapping[str, object], ts: str) -> None:
        """Chain one entry after the head (sent with the next batch); the one place every row
        passes: redacted here, before it is hashed."""
        if self.engine.redactor is not None:
            fields = redact(fields, self.engine.redactor)
        values = [fields.get(name) for name in COLUMNS]
        values[_PREV], values[_TS] = self.head, ts
        self.head = entry_hash(values)
        self.last_id += 1
        self.pending.append([self.last_id, *values, self.head])
        self.appended += 1

    def send(self) -> None:
        if self.pending:
            with self.conn.cursor() as cur:
                cur.executemany(INSERT, self.pending)
            self.pending = []
