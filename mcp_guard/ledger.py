"""The SQLite ledger store: schema and migrations, appends, and the queries behind `mcp-guard ledger`.
Synchronous (stdlib sqlite3, sqlite-utils for the schema): callers on an event loop run it in a worker
thread. Imports nothing from mcp_guard but errors and ledger_chain (the hash chain and verify)."""

from __future__ import annotations

import json
import math
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NoReturn, Self, TypeVar
from urllib.parse import quote

from sqlite_utils import Database, Migrations

from mcp_guard.errors import LedgerError, LedgerUnavailable
from mcp_guard.ledger_chain import (
    _JSON,
    HASHED_COLUMNS,
    TRIGGERS,
    ZERO_HASH,
    VerifyResult,
    _verify,
    entry_hash,
)

# Re-exported: callers and tests import these from mcp_guard.ledger, as before the chain moved out.
from mcp_guard.ledger_chain import HASH_DOMAIN as HASH_DOMAIN
from mcp_guard.ledger_chain import _json_object as _json_object
from mcp_guard.ledger_chain import _walk_chain as _walk_chain

EVENT_KINDS = frozenset({"policy", "pin", "approval"})
DECISIONS = frozenset({"allow", "deny"})
OUTCOMES = frozenset({"ok", "error", "upstream_error", "timeout", "cancelled"})

# SQL is only ever built from these constants; every value is a bound parameter.
_INSERT = f"INSERT INTO entries ({', '.join(HASHED_COLUMNS)}, entry_hash) VALUES ({', '.join('?' * 17)})"  # noqa: S608
_SELECT_INVOCATIONS = (
    "SELECT id, call_id, ts, agent, session, server, tool, arguments, decision, reason, detail, "
    "outcome, duration_ms, outcome_detail, policy_hash FROM invocations WHERE "
)
_JSON_FIELDS = "id call_id ts agent session server tool arguments decision reason detail outcome duration_ms"
CHECKPOINT_EVERY = 0.5  # seconds between background checkpoints
BACKSTOP_PAGES = 16384  # SQLite's own checkpoint, when the background one falls this far behind (64 MiB)
_PREV, _TS = HASHED_COLUMNS.index("prev_hash"), HASHED_COLUMNS.index("ts")
_MIGRATIONS = Migrations("mcp_guard_ledger")
_MIGRATION_NAMES = ("0001_entries",)  # in order, one per function registered below


@_MIGRATIONS(name=_MIGRATION_NAMES[0])
def _create_entries(db: Database) -> None:
    # AUTOINCREMENT keeps the highest id ever used in sqlite_sequence, so verify can tell a cut-off tail.
    db.execute(
        "CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, kind TEXT NOT NULL, "
        "call_id TEXT, agent TEXT, session TEXT, server TEXT, tool TEXT, arguments TEXT, decision TEXT, "
        "reason TEXT, detail TEXT, outcome TEXT, duration_ms REAL, policy_hash TEXT, payload TEXT, "
        "prev_hash TEXT NOT NULL, entry_hash TEXT NOT NULL)"
    )
    entries = db.table("entries")
    entries.create_index(["call_id", "kind"], index_name="entries_call_id")
    entries.create_index(["agent"], index_name="entries_agent")
    entries.create_index(["server", "tool", "ts"], index_name="entries_server_tool_ts")
    # One decision per call: a reused call_id is a caller bug and must not make outcomes ambiguous.
    db.execute("CREATE UNIQUE INDEX entries_decision ON entries (call_id) WHERE kind = 'decision'")
    for sql in TRIGGERS.values():
        db.execute(sql)
    db.create_view(
        "invocations",
        "SELECT d.id AS id, d.call_id AS call_id, d.ts AS ts, d.agent AS agent, d.session AS session, "
        "d.server AS server, d.tool AS tool, d.arguments AS arguments, d.decision AS decision, "
        "d.reason AS reason, d.detail AS detail, d.policy_hash AS policy_hash, o.id AS outcome_id, "
        "o.ts AS outcome_ts, o.outcome AS outcome, o.duration_ms AS duration_ms, o.detail AS outcome_detail "
        "FROM entries AS d LEFT JOIN entries AS o ON o.id = (SELECT min(x.id) FROM entries AS x "
        "WHERE x.call_id = d.call_id AND x.kind = 'outcome') WHERE d.kind = 'decision'",
    )


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One decision about one tools/call, as the request path hands it to the ledger."""

    call_id: str  # uuid4 hex, minted by the caller
    agent: str
    session: str | None
    server: str | None  # None when the name resolved to no tool
    tool: str  # upstream tool name, or the name as sent (escaped, at most 256 characters)
    arguments: object  # JSON value, already redacted
    decision: str  # "allow" | "deny"
    reason: str | None  # denial code, e.g. "limit_exceeded"
    detail: str | None
    policy_hash: str  # sha256 hex of the policy in force


@dataclass(frozen=True, slots=True)
class Invocation:
    """A decision joined with its first outcome; outcome is None when denied or never finished."""

    id: int
    call_id: str
    ts: str
    agent: str
    session: str | None
    server: str | None
    tool: str
    arguments: object
    decision: str
    reason: str | None
    detail: str | None  # the decision's
    outcome: str | None
    duration_ms: float | None
    outcome_detail: str | None
    policy_hash: str | None

    def to_json(self) -> dict[str, object]:
        """SPEC's `ledger tail --json` fields, plus id and policy_hash."""
        fields = {name: getattr(self, name) for name in _JSON_FIELDS.split()}
        if self.detail is None:
            fields["detail"] = self.outcome_detail
        return fields | {"policy_hash": self.policy_hash}


@dataclass(frozen=True, slots=True)
class Event:
    """A policy, pin or approval entry."""

    id: int
    ts: str
    kind: str
    call_id: str | None
    agent: str | None
    server: str | None
    tool: str | None
    payload: object
    policy_hash: str | None


class Window:
    """The history as seen from inside the transaction that records a decision."""

    def __init__(self, conn: sqlite3.Connection, now: datetime) -> None:
        self.now = now
        self.queued: list[dict[str, object]] = []
        self._conn = conn

    def allowed(
        self, server: str, tool: str, *, after_id: int = 0, seconds: float | None = None
    ) -> list[tuple[int, str, str, str | None, object]]:
        """(id, ts, agent, session, arguments) of the allow decisions for server and tool with an
        id above `after_id` (and, with `seconds`, decided in `(now - seconds, now]`), in id order:
        whatever the grant, agent, policy or outcome."""
        # Without `seconds` the rows are the few appended since `after_id`: the unary `+` keeps
        # SQLite on the id range instead of the (server, tool, ts) index, which would read every
        # row the tool ever had and make each call slower as the ledger grows.
        on = "server = ? AND tool = ?" if seconds is not None else "+server = ? AND +tool = ?"
        sql = (
            f"SELECT id, ts, agent, session, arguments FROM entries WHERE id > ? AND {on} "  # noqa: S608
            "AND kind = 'decision' AND decision = 'allow'"
        )
        params: list[object] = [after_id, server, tool]
        if seconds is not None:
            sql += " AND ts > ?"
            params.append(self.since(seconds))
        rows = self._conn.execute(sql + " ORDER BY id", params)
        return [(i, ts, a, s, _loads(args)) for i, ts, a, s, args in rows]

    def since(self, seconds: float) -> str:
        """The timestamp `seconds` before now, in the ledger's format."""
        return format_ts(self.now - timedelta(seconds=seconds))

    def last_id(self) -> int:
        return int(self._conn.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0])

    def events(self, kind: str, *, server: str, tool: str, agent: str) -> list[Event]:
        """Events of one kind for one agent, server and tool, oldest first."""
        return self._events("kind = ? AND server = ? AND tool = ? AND agent = ?", (kind, server, tool, agent))

    def all_events(self, kind: str) -> list[Event]:
        """Every event of one kind, oldest first."""
        return self._events("kind = ?", (kind,))

    def _events(self, where: str, params: tuple[str, ...]) -> list[Event]:
        sql = "SELECT id, ts, kind, call_id, agent, server, tool, payload, policy_hash FROM entries WHERE "
        rows = self._conn.execute(sql + where + " ORDER BY id", params)
        return [Event(i, ts, k, c, a, s, t, _loads(p), h) for i, ts, k, c, a, s, t, p, h in rows]

    def queue_event(self, kind: str, payload: dict[str, Any], **columns: str | None) -> None:
        """Append an event right after the decision, in the same transaction."""
        self.queued.append(_event_fields(kind, payload, columns.pop("policy_hash", None), **columns))


Check = Callable[[Window], CallRecord]
T = TypeVar("T")


def format_ts(ts: datetime) -> str:
    """UTC ISO-8601 with microseconds and Z; fixed width, so text order is time order."""
    if ts.tzinfo is None:
        msg = f"timestamp {ts!r} has no time zone"
        raise ValueError(msg)
    if ts.tzinfo is not UTC:
        ts = ts.astimezone(UTC)
    return ts.isoformat(timespec="microseconds")[:-6] + "Z"  # "+00:00" becomes "Z"


def canonical_json(value: object) -> str:
    """Sorted keys, no whitespace, UTF-8; ValueError for NaN, infinities and values that are not JSON."""
    try:
        return _text(_JSON(value))
    except (TypeError, ValueError) as exc:
        msg = f"value is not JSON: {exc}"
        raise ValueError(msg) from exc


def _text(value: str) -> str:
    # SQLite text is UTF-8: a lone surrogate cannot be stored, so it is kept as a visible escape.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _opt_text(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _one_of(value: str, allowed: frozenset[str], what: str) -> str:
    if value not in allowed:
        msg = f"{what} must be one of {sorted(allowed)}, not {value!r}"
        raise ValueError(msg)
    return value


_PROBLEMS = {
    "SQLITE_FULL": "disk is full",
    "SQLITE_READONLY": "ledger is read-only",
    "SQLITE_CANTOPEN": "cannot open the file",
    "SQLITE_NOTADB": "not a SQLite database",
    "SQLITE_CORRUPT": "database is corrupt",
}


def describe(exc: sqlite3.Error, busy_timeout: float) -> str:
    """What went wrong, for the person who must fix it."""
    name = getattr(exc, "sqlite_errorname", "").split("_")
    if name[:2] == ["SQLITE", "BUSY"] or "locked" in str(exc):
        return _locked(busy_timeout)
    problem = _PROBLEMS.get("_".join(name[:2]))
    return f"{problem} ({exc})" if problem else str(exc)


def _locked(busy_timeout: float) -> str:
    return f"ledger is locked by another writer (waited {busy_timeout:g} s)"


def _loads(text: str | None) -> object:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text  # written by hand; verify says so


class _Checkpointer:
    """Copies the write-ahead log back into the ledger file from a thread of its own, so that a
    commit never pays for it: SQLite's automatic checkpoint runs inside the commit that crosses
    its threshold and fsyncs twice, even with synchronous = NORMAL. PASSIVE never blocks a writer
    or a reader; one that cannot finish (a reader holds an old snapshot) is simply tried again."""

    def __init__(self, file: Path, every: float) -> None:
        self._conn = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            # Busy with another process's checkpoint, or the file went away: next time.
            with suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


class _Transaction:
    """BEGIN .. COMMIT on the ledger's connection under its thread lock; ROLLBACK on any error,
    and a sqlite3.Error becomes `error` with a message for the person who must fix it. A class
    rather than a generator: it runs twice on every call."""

    __slots__ = ("_error", "_flushing", "_ledger", "_write")

    def __init__(self, ledger: Ledger, *, write: bool) -> None:
        self._ledger, self._write = ledger, write
        self._error = LedgerUnavailable if write else LedgerError
        self._flushing = 0  # deferred outcomes appended in this transaction

    def __enter__(self) -> sqlite3.Connection:
        ledger = self._ledger
        # Waiting for another thread of this process counts against the same busy_timeout.
        if not ledger._lock.acquire(blocking=False):
            started = time.monotonic()
            if not ledger._lock.acquire(timeout=ledger._busy_timeout):
                msg = f"{ledger._path}: {_locked(ledger._busy_timeout)}"
                raise self._error(msg)
            waited = time.monotonic() - started
        else:
            waited = 0.0
        conn = ledger._conn
        try:
            if waited > 0.001 or ledger._shortened:
                # Only after a noticeable wait for the thread lock: the pragma costs ~20 us a call.
                left = max(1, int((ledger._busy_timeout - waited) * 1000))
                conn.execute(f"PRAGMA busy_timeout = {left}")
                ledger._shortened = left < int(ledger._busy_timeout * 1000)
            if self._write:
                conn.execute("BEGIN IMMEDIATE")
                ledger._head = None
                self._flushing = ledger._append_deferred(conn)
            else:
                conn.execute("BEGIN")
        except BaseException as exc:
            self._fail(exc)
        return conn

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            ledger = self._ledger
            try:
                ledger._conn.execute("COMMIT")
            except BaseException as failed:
                self._fail(failed)
            if self._flushing:
                del ledger._deferred[: self._flushing]
            ledger._lock.release()
        else:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> NoReturn:
        ledger = self._ledger
        try:
            _rollback(ledger._conn)
        finally:
            ledger._lock.release()
        if isinstance(exc, sqlite3.Error):
            msg = f"{ledger._path}: {describe(exc, ledger._busy_timeout)}"
            raise self._error(msg) from exc
        raise exc


class Ledger:
    """One connection to the ledger file, shared by threads (calls are serialised)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, busy_timeout: float) -> None:
        self._conn = conn
        self._path = path  # as given, for messages
        self._file = path.absolute()  # for connections opened later, whatever the cwd by then
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._shortened = False  # the connection's busy_timeout is below the full bound
        self._checkpointer: _Checkpointer | None = None
        # Outcomes recorded with defer=True, committed by the next write transaction (or flush).
        # Appended from any thread (list.append is atomic); removed only under the lock, once
        # committed.
        self._deferred: list[tuple[dict[str, object], str]] = []
        self._head: str | None = None  # the chain head within the write transaction in progress

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
        conn = _connect(path, str(path), busy_timeout, uri=False)
        with _closing_on_error(conn, path, busy_timeout):
            _configure(conn, path, synchronous, busy_timeout)
            _migrate(conn, path)
        return cls(conn, path, busy_timeout)

    @classmethod
    def open_readonly(cls, path: Path, *, busy_timeout: float = 2.0) -> Self:
        """Open for reading only (works while guards append); every write raises LedgerUnavailable."""
        path = Path(path)
        if not path.is_file():
            msg = f"{path}: no ledger file"
            raise LedgerError(msg)
        conn = _connect(path, _readonly_uri(path), busy_timeout, uri=True)
        with _closing_on_error(conn, path, busy_timeout):
            conn.execute("PRAGMA trusted_schema = OFF")
            db = Database(conn, recursive_triggers=False, execute_plugins=False)
            _refuse_newer(db, path)
            if _MIGRATIONS.pending(db):
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
            self._checkpointer = _Checkpointer(self._file, every)

    def close(self) -> None:
        """Commit the deferred outcomes and close; LedgerUnavailable (after closing) if they
        could not be committed."""
        try:
            self.flush()
        finally:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
            with self._lock:
                self._conn.close()

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
            self._record(_decision_fields(rec), ts)
            return rec
        with self._transaction() as conn:
            window = Window(conn, ts or datetime.now(UTC))
            rec = check(window)
            stamp = format_ts(window.now)
            self._append(conn, _decision_fields(rec), stamp)
            for fields in window.queued:
                self._append(conn, fields, stamp)
        return rec

    def hold(self, fn: Callable[[Window], T]) -> T:
        """Run `fn` inside a write transaction and append the events it queues."""
        with self._transaction() as conn:
            window = Window(conn, datetime.now(UTC))
            result = fn(window)
            for fields in window.queued:
                self._append(conn, fields, format_ts(window.now))
        return result

    def peek(self, fn: Callable[[Window], T]) -> T:
        """Run `fn` on one consistent snapshot; what it queues is dropped."""
        with self._read() as conn:
            return fn(Window(conn, datetime.now(UTC)))

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
        if not math.isfinite(duration := float(duration_ms)) or duration < 0:
            msg = f"duration_ms must be a finite number >= 0, not {duration_ms!r}"
            raise ValueError(msg)
        duration += 0.0  # -0.0 would come back from SQLite as 0.0 and no longer match its hash
        fields: dict[str, object] = {
            "kind": "outcome",
            "call_id": _text(call_id),
            "outcome": _one_of(outcome, OUTCOMES, "outcome"),
            "duration_ms": duration,
            "detail": _opt_text(detail),
        }
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
        fields = _event_fields(
            kind, payload, policy_hash, call_id=call_id, agent=agent, server=server, tool=tool
        )
        return self._record(fields, ts)

    def _record(self, fields: Mapping[str, object], ts: datetime | None) -> int:
        stamp = None if ts is None else format_ts(ts)
        with self._transaction() as conn:
            return self._append(conn, fields, stamp)

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """BEGIN IMMEDIATE .. COMMIT: the write lock is held, so the chain head cannot move meanwhile.
        Deferred outcomes are appended first.

        A check that must be atomic with its append (budgets, pins) reads inside it, then `_append`s.
        """
        return _Transaction(self, write=True)

    def _append_deferred(self, conn: sqlite3.Connection) -> int:
        batch = self._deferred[:]
        for fields, stamp in batch:
            self._append(conn, fields, stamp)
        return len(batch)

    def _append(self, conn: sqlite3.Connection, fields: Mapping[str, object], ts: str | None) -> int:
        """Insert one entry chained to the current head; only inside `_transaction`."""
        head = self._head
        if head is None:
            row = conn.execute("SELECT entry_hash FROM entries ORDER BY id DESC LIMIT 1").fetchone()
            head = row[0] if row else ZERO_HASH
        values = [fields.get(name) for name in HASHED_COLUMNS]
        values[_PREV] = head
        values[_TS] = ts or format_ts(datetime.now(UTC))
        self._head = entry_hash(values)
        values.append(self._head)
        return int(conn.execute(_INSERT, values).lastrowid or 0)

    # -- reading: each call reads one consistent snapshot, and raises LedgerError ------------------

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        return _Transaction(self, write=False)

    def last_id(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0])

    def invocations(
        self,
        *,
        limit: int | None = None,
        agent: str | None = None,
        tool: str | None = None,
        decision: str | None = None,
        after_id: int | None = None,
        until_id: int | None = None,
    ) -> list[Invocation]:
        """Decisions joined with their first outcome, oldest first; `limit` keeps the most recent.

        `tool` matches the upstream tool name or `server.tool`; the ids bound the decision's id.
        """
        where, params = _where(*_filters(agent, tool, decision), ("id > ?", after_id), ("id <= ?", until_id))
        sql = _SELECT_INVOCATIONS + where
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?)"  # noqa: S608
            params.append(limit)
        with self._read() as conn:
            return [_invocation(row) for row in conn.execute(sql + " ORDER BY id", params)]

    def updates(
        self, after_id: int, *, agent: str | None = None, tool: str | None = None, decision: str | None = None
    ) -> tuple[int, list[Invocation]]:
        """The new last entry id, and the invocations whose decision or outcome came after `after_id`."""
        with self._read() as conn:
            high = int(conn.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0])
            if high <= after_id:
                return after_id, []
            touched = (
                "call_id IN (SELECT call_id FROM entries WHERE id > ? AND id <= ? "
                "AND kind IN ('decision', 'outcome'))"
            )
            where, params = _where(*_filters(agent, tool, decision), (touched, (after_id, high)))
            rows = conn.execute(_SELECT_INVOCATIONS + where + " ORDER BY id", params)
            return high, [_invocation(row) for row in rows]

    def events(
        self, kind: str, *, server: str | None = None, tool: str | None = None, after_id: int | None = None
    ) -> list[Event]:
        """Policy, pin or approval entries of one kind, oldest first."""
        where, params = _where(
            ("kind = ?", kind), ("server = ?", server), ("tool = ?", tool), ("id > ?", after_id)
        )
        sql = "SELECT id, ts, kind, call_id, agent, server, tool, payload, policy_hash FROM entries WHERE "
        with self._read() as conn:
            rows = conn.execute(sql + where + " ORDER BY id", params).fetchall()
        return [Event(i, ts, k, c, a, s, t, _loads(p), h) for i, ts, k, c, a, s, t, p, h in rows]

    def stats(self, since: datetime | None = None) -> dict[str, Any]:
        """Counts of invocations by agent, tool, decision and reason, and of allowed ones by outcome."""
        stamp = None if since is None else format_ts(since)
        when, params = _where(("ts >= ?", stamp))
        base = f"FROM entries WHERE kind = 'decision' AND {when}"
        groups = {
            "by_agent": "agent",
            "by_tool": "CASE WHEN server IS NULL THEN tool ELSE server || '.' || tool END",
            "by_decision": "decision",
            "by_reason": "reason",
        }
        result: dict[str, Any] = {"since": stamp}
        with self._read() as conn:
            result["invocations"] = conn.execute(f"SELECT count(*) {base}", params).fetchone()[0]
            for key, expr in groups.items():
                sql = f"SELECT {expr} AS k, count(*) {base} AND {expr} IS NOT NULL GROUP BY k"
                result[key] = _ranked(conn.execute(sql, params))
            sql = "SELECT coalesce(outcome, 'none') AS k, count(*) FROM invocations WHERE decision = 'allow'"
            result["by_outcome"] = _ranked(conn.execute(f"{sql} AND {when} GROUP BY k", params))
        return result

    def verify(self) -> VerifyResult:
        """Recompute the chain in id order, on a read-only connection of its own."""
        conn = _connect(self._file, _readonly_uri(self._file), self._busy_timeout, uri=True)
        with _closing_on_error(conn, self._path, self._busy_timeout):
            conn.execute("BEGIN")
            result = _verify(conn)
            conn.execute("COMMIT")
        conn.close()
        return result


def _decision_fields(rec: CallRecord) -> dict[str, object]:
    return {
        "kind": "decision",
        "call_id": _text(rec.call_id),
        "agent": _text(rec.agent),
        "session": _opt_text(rec.session),
        "server": _opt_text(rec.server),
        "tool": _text(rec.tool),
        "arguments": canonical_json(rec.arguments),
        "decision": _one_of(rec.decision, DECISIONS, "decision"),
        "reason": _opt_text(rec.reason),
        "detail": _opt_text(rec.detail),
        "policy_hash": _text(rec.policy_hash),
    }


def _event_fields(
    kind: str, payload: dict[str, Any], policy_hash: str | None, **columns: str | None
) -> dict[str, object]:
    if not isinstance(payload, dict):
        msg = f"payload must be a dict, not {type(payload).__name__}"
        raise ValueError(msg)
    fields: dict[str, object] = {
        "kind": _one_of(kind, EVENT_KINDS, "event kind"),
        "payload": canonical_json(payload),
        "policy_hash": _opt_text(policy_hash),
    }
    for name in ("call_id", "agent", "server", "tool"):
        fields[name] = _opt_text(columns.get(name))
    return fields


def _filters(agent: str | None, tool: str | None, decision: str | None) -> list[tuple[str, object]]:
    by_tool = None if tool is None else (tool, tool)
    return [
        ("agent = ?", agent),
        ("(tool = ? OR server || '.' || tool = ?)", by_tool),
        ("decision = ?", decision),
    ]


def _where(*conditions: tuple[str, object]) -> tuple[str, list[object]]:
    """The conditions ANDed and their parameters (a tuple for several); those whose value is None left out."""
    sql: list[str] = []
    params: list[object] = []
    for condition, value in conditions:
        if value is not None:
            sql.append(condition)
            params += value if isinstance(value, tuple) else [value]
    return " AND ".join(sql) or "1", params


def _invocation(row: Sequence[Any]) -> Invocation:
    values = list(row)
    values[7] = _loads(values[7])
    return Invocation(*values)


def _ranked(rows: sqlite3.Cursor) -> dict[str, int]:
    return {str(k): int(n) for k, n in sorted(rows, key=lambda kn: (-kn[1], str(kn[0])))}


def _connect(path: Path, target: str, busy_timeout: float, *, uri: bool) -> sqlite3.Connection:
    if not path.parent.is_dir():
        msg = f"{path}: directory {str(path.parent)!r} does not exist"
        raise LedgerError(msg)
    if path.is_dir():
        msg = f"{path}: is a directory"
        raise LedgerError(msg)
    try:
        return sqlite3.connect(
            target, timeout=busy_timeout, isolation_level=None, check_same_thread=False, uri=uri
        )
    except sqlite3.Error as exc:
        msg = f"{path}: {describe(exc, busy_timeout)}"
        raise LedgerError(msg) from exc


@contextmanager
def _closing_on_error(conn: sqlite3.Connection, path: Path, busy_timeout: float) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        conn.close()
        msg = f"{path}: {describe(exc, busy_timeout)}"
        raise LedgerError(msg) from exc
    except BaseException:
        conn.close()
        raise


def _readonly_uri(path: Path) -> str:
    return f"file:{quote(str(path.absolute()))}?mode=ro"


def _configure(conn: sqlite3.Connection, path: Path, synchronous: int, busy_timeout: float) -> None:
    """Set the pragmas and read them back: libraries and file systems can silently ignore them."""
    conn.execute("PRAGMA trusted_schema = OFF")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    if synchronous == 2 and sys.platform == "darwin":
        conn.execute("PRAGMA fullfsync = ON")  # without it, macOS fsync stops at the drive's cache
    got = tuple(
        conn.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("journal_mode", "synchronous", "busy_timeout")
    )
    want = ("wal", synchronous, int(busy_timeout * 1000))
    if got != want:
        msg = f"{path}: pragmas not applied: journal_mode, synchronous, busy_timeout are {got}, need {want}"
        raise LedgerError(msg)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    # BEGIN IMMEDIATE even with nothing pending: it proves the file writable at open, and two guards
    # creating one file at once cannot both run a migration.
    db = Database(conn, recursive_triggers=False, execute_plugins=False)
    conn.execute("BEGIN IMMEDIATE")
    try:
        _refuse_newer(db, path)
        _MIGRATIONS.apply(db)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _refuse_newer(db: Database, path: Path) -> None:
    unknown = [m.name for m in _MIGRATIONS.applied(db) if m.name not in _MIGRATION_NAMES]
    if unknown:
        msg = f"{path}: written by a newer mcp-guard (unknown migrations {unknown})"
        raise LedgerError(msg)


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # the connection is gone or the transaction already ended; the first error is the one to report
