"""The PostgreSQL store's Window: the SQLite store's window and tallies, read through a connection
that speaks PostgreSQL. The queries they share are plain SQL; the few that are SQLite's own are
written again here (unary `+`, json_extract) or name their SQLite words in the window's dialect
attributes, which this one sets to PostgreSQL's (no INDEXED BY, `IS NOT DISTINCT FROM ?`).
Sound for the same reason as on SQLite: every write transaction holds the chain head's row lock
from its start, so ids are in commit order and nothing is appended while a decision reads.
Imports nothing from mcp_guard but the ledger's values and the SQLite store's window, tallies and
queries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from mcp_guard.ledger.base import LedgerEvent
from mcp_guard.ledger.sqlite import queries
from mcp_guard.ledger.sqlite.queries import loads
from mcp_guard.ledger.sqlite.schema import STANDING
from mcp_guard.ledger.sqlite.tallies import Tallies
from mcp_guard.ledger.sqlite.window import SQLiteWindow


class Connection:
    """A psycopg connection that takes the `?` placeholders the shared queries are written with.
    The shared SQL holds no `?` or `%` but placeholders (checked by the tests of both stores)."""

    __slots__ = ("raw",)

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[object] = ()) -> psycopg.Cursor[Any]:
        return self.raw.execute(sql.replace("?", "%s"), list(params))


_ALLOWED = (
    "SELECT id, ts, call_id, agent, session, arguments FROM entries "
    "WHERE kind = 'decision' AND decision = 'allow' AND "
)
_ALLOWED_SINCE = (
    "SELECT id, ts, call_id, agent, session, arguments FROM (SELECT * FROM entries "
    "WHERE id > ? AND id <= ? OFFSET 0) AS recent WHERE server = ? AND tool = ? "
    "AND kind = 'decision' AND decision = 'allow' ORDER BY id"
)


class PostgresWindow(SQLiteWindow):
    """The history as seen from inside one transaction (see `Window`)."""

    __slots__ = ()
    _STANDING_INDEX = _DENIALS_INDEX = ""  # PostgreSQL takes no index hints; it plans with the partial ones
    _SAME_SESSION = "session IS NOT DISTINCT FROM ?"

    def __init__(self, conn: Connection, now: datetime, tallies: Tallies) -> None:
        super().__init__(conn, now, tallies)  # type: ignore[arg-type]

    def revoked(self, jti: str) -> bool:
        # Few rows (an operator writes each by hand); parsed here, so a payload that is not JSON
        # (written by hand; verify says so) cannot fail the check of every token.
        rows = self._conn.execute("SELECT payload FROM entries WHERE kind = 'revocation'")
        for (payload,) in rows:
            found = loads(payload)
            if isinstance(found, dict) and found.get("jti") == jti:
                return True
        return False

    def allowed(
        self, server: str, tool: str, *, after_id: int = 0, seconds: float | None = None
    ) -> list[tuple[int, str, str, str, str | None, object]]:
        if seconds is not None:
            sql = _ALLOWED + "server = ? AND tool = ? AND ts > ? AND id > ? ORDER BY id"
            params: list[object] = [server, tool, self.since(seconds), after_id]
        else:
            # The few rows appended since `after_id`, read by id alone: the subquery (an optimisation
            # fence, OFFSET 0) keeps the planner on the id range even where its statistics are stale
            # (a ledger just filled or copied), where it would rather read every row the tool ever
            # had through (server, tool, ts), as the SQLite store's unary `+` says.
            sql = _ALLOWED_SINCE
            params = [after_id, self.last_id(), server, tool]
        rows = self._conn.execute(sql, params)
        return [(i, ts, c, a, s, loads(args)) for i, ts, c, a, s, args in rows]

    def _standing(self, *conditions: tuple[str, object]) -> list[LedgerEvent]:
        where, params = queries.where(*conditions)
        return self._made(queries.events_where(self._conn, f"{STANDING} AND {where}", params))
