"""One transaction on the SQLite ledger's connection, as the engine (engine.py) runs every read and
write: under the engine's thread lock, BEGIN IMMEDIATE for a write (deferred outcomes appended
first), ROLLBACK on any error, and a sqlite3.Error turned into words for the person who must fix
it. Private to ledger.sqlite."""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, NoReturn

from mcp_guard.errors import LedgerError, LedgerUnavailable
from mcp_guard.ledger.sqlite import schema
from mcp_guard.ledger.sqlite.tallies import Tallies

if TYPE_CHECKING:
    from mcp_guard.ledger.sqlite.engine import Ledger


class Transaction:
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
                msg = f"{ledger._path}: {schema.locked(ledger._busy_timeout)}"
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
        if exc is not None:
            self._fail(exc)
        ledger = self._ledger
        try:
            ledger._conn.execute("COMMIT")
        except BaseException as failed:
            self._fail(failed)
        try:
            if self._flushing:
                del ledger._deferred[: self._flushing]
        finally:
            ledger._lock.release()

    def _fail(self, exc: BaseException) -> NoReturn:
        ledger = self._ledger
        try:
            schema.rollback(ledger._conn)
        finally:
            # The tallies may have read rows of the transaction undone (a batch's earlier
            # decisions): read the windows afresh rather than count what was never committed.
            ledger._tallies = Tallies()
            ledger._lock.release()
        if isinstance(exc, sqlite3.Error):
            msg = f"{ledger._path}: {schema.describe(exc, ledger._busy_timeout)}"
            raise self._error(msg) from exc
        raise exc
