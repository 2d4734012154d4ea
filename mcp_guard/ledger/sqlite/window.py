"""The SQLite store's Window: the history as one transaction on the ledger's connection sees it,
in the guard's terms (spend, approval and pin events), and the events appended through it. Only
the store's own code sees the rows and ids behind it. Imports nothing from mcp_guard but the
ledger's values and its siblings in ledger.sqlite."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from mcp_guard.ledger.base import EVENT_TYPES, ApprovalEvent, LedgerEvent, PinEvent, Scope
from mcp_guard.ledger.entries import format_ts
from mcp_guard.ledger.sqlite import queries
from mcp_guard.ledger.sqlite.queries import loads
from mcp_guard.ledger.sqlite.tallies import Tallies
from mcp_guard.policy import budgets

if TYPE_CHECKING:
    from mcp_guard.manifest import Budget


class SQLiteWindow:
    """The history as seen from inside one transaction (see `Window`)."""

    __slots__ = ("_conn", "_tallies", "now", "queued")

    def __init__(self, conn: sqlite3.Connection, now: datetime, tallies: Tallies) -> None:
        self.now = now
        self.queued: list[dict[str, object]] = []
        self._conn, self._tallies = conn, tallies

    # -- Window -------------------------------------------------------------------------------

    def spent(self, server: str, tool: str, budget: Budget, scope: Scope) -> Decimal:
        return self._tallies.spent(self, server, tool, budget, scope)

    def approvals(
        self, *, server: str | None = None, tool: str | None = None, agent: str | None = None
    ) -> Sequence[ApprovalEvent]:
        return [e for e in self._events("approval", server, tool, agent) if isinstance(e, ApprovalEvent)]

    def pins(self, *, server: str | None = None) -> Sequence[PinEvent]:
        return [e for e in self._events("pin", server, None, None) if isinstance(e, PinEvent)]

    def earlier(self, server: str, tool: str, seconds: float, scope: Scope) -> tuple[str, str] | None:
        # The (server, tool, ts) index bounds the read to the window; scopes compare as budgets do.
        rows = self._conn.execute(
            "SELECT call_id, ts, agent, session, arguments FROM entries WHERE server = ? AND tool = ? "
            "AND ts > ? AND kind = 'decision' AND decision = 'allow' ORDER BY id DESC",
            (server, tool, self.since(seconds)),
        )
        for call_id, ts, agent, session, text in rows:
            arguments = loads(text)
            args = arguments if type(arguments) is dict else {}
            if all(budgets.scope_value(key, agent, session, args) == value for key, value in scope):
                return call_id, ts
        return None

    def append(self, event: LedgerEvent) -> None:
        self.queued.append(event.row())

    # -- for the store's budget tallies -----------------------------------------------------------

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
        return [(i, ts, a, s, loads(args)) for i, ts, a, s, args in rows]

    def since(self, seconds: float) -> str:
        """The timestamp `seconds` before now, in the ledger's format."""
        return format_ts(self.now - timedelta(seconds=seconds))

    def last_id(self) -> int:
        return queries.last_id(self._conn)

    def _events(
        self, kind: str, server: str | None, tool: str | None, agent: str | None
    ) -> list[LedgerEvent]:
        where, params = queries.where(
            ("kind = ?", kind), ("server = ?", server), ("tool = ?", tool), ("agent = ?", agent)
        )
        made = EVENT_TYPES[kind]
        return [
            made(
                payload=e.payload,
                agent=e.agent,
                server=e.server,
                tool=e.tool,
                call_id=e.call_id,
                policy_hash=e.policy_hash,
            )
            for e in queries.events_where(self._conn, where, params)
            if isinstance(e.payload, dict)  # written by hand; verify says so
        ]
