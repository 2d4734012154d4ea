"""The SQLite store's Window: the history as one transaction on the ledger's connection sees it,
in the guard's terms (spend, approval and pin events), and the events appended through it. Only
the store's own code sees the rows and ids behind it. Imports nothing from mcp_guard but the
ledger's values and its siblings in ledger.sqlite."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from mcp_guard.ledger.base import (
    EVENT_TYPES,
    ActivationEvent,
    ApprovalEvent,
    LedgerEvent,
    LockoutEvent,
    MarkEvent,
    PinEvent,
    Scope,
)
from mcp_guard.ledger.entries import format_ts
from mcp_guard.ledger.sqlite import queries
from mcp_guard.ledger.sqlite.queries import loads
from mcp_guard.ledger.sqlite.schema import DENIED, REVOKED, STANDING
from mcp_guard.ledger.sqlite.tallies import Tallies
from mcp_guard.policy.reasons import NOT_COUNTED

if TYPE_CHECKING:
    from mcp_guard.manifest import Budget


class SQLiteWindow:
    """The history as seen from inside one transaction (see `Window`)."""

    __slots__ = ("_conn", "_last", "_tallies", "now", "queued")
    # What SQLite's SQL says that another dialect says otherwise (the PostgreSQL window's own).
    _STANDING_INDEX = " INDEXED BY entries_standing"
    _DENIALS_INDEX = " INDEXED BY entries_denials"
    _SAME_SESSION = "session IS ?"

    def __init__(self, conn: sqlite3.Connection, now: datetime, tallies: Tallies) -> None:
        self.now = now
        self.queued: list[dict[str, object]] = []
        self._conn, self._tallies = conn, tallies
        self._last: int | None = None

    # -- Window -------------------------------------------------------------------------------

    def spent(self, server: str, tool: str, budget: Budget, scope: Scope) -> Decimal:
        return self._tallies.spent(self, server, tool, budget, scope)

    def approvals(
        self, *, server: str | None = None, tool: str | None = None, agent: str | None = None
    ) -> Sequence[ApprovalEvent]:
        return [e for e in self._events("approval", server, tool, agent) if isinstance(e, ApprovalEvent)]

    def pins(self, *, server: str | None = None) -> Sequence[PinEvent]:
        return [e for e in self._events("pin", server, None, None) if isinstance(e, PinEvent)]

    def earlier(
        self, server: str, tool: str, seconds: float, scope: Scope, *, ok: bool = False
    ) -> tuple[str, str] | None:
        return self._tallies.latest(self, server, tool, seconds, scope, ok=ok)

    def activations(self, *, agent: str | None = None) -> Sequence[ActivationEvent]:
        latest: dict[tuple[str | None, str | None, str | None], ActivationEvent] = {}
        for event in self._standing(("kind = 'activation'", ()), ("agent = ?", agent)):
            if isinstance(event, ActivationEvent):
                latest[event.agent, event.server, event.tool] = event
        now = format_ts(self.now)
        return [e for e in latest.values() if e.payload.get("action") == "activate" and e.until > now]

    def lockouts(self, *, agent: str | None = None) -> Sequence[LockoutEvent]:
        latest: dict[str | None, LedgerEvent] = {}
        for event in self._standing(("kind IN ('lockout', 'unlock')", ()), ("agent = ?", agent)):
            latest[event.agent] = event
        now = format_ts(self.now)
        return [e for e in latest.values() if isinstance(e, LockoutEvent) and e.until > now]

    def denials(self, agent: str, seconds: float) -> int:
        since = self.since(seconds)
        reset = self._conn.execute(
            f"SELECT max(id), max(ts) FROM entries{self._STANDING_INDEX} WHERE {STANDING} "  # noqa: S608
            "AND kind IN ('lockout', 'unlock') AND agent = ?",
            (agent,),
        ).fetchone()
        after = reset[0] or 0
        if reset[1] is not None and reset[1] > since:
            since = reset[1]
        skipped = ", ".join("?" * len(NOT_COUNTED))
        row = self._conn.execute(
            f"SELECT count(*) FROM entries{self._DENIALS_INDEX} WHERE {DENIED} AND agent = ? "  # noqa: S608
            f"AND ts > ? AND id > ? AND coalesce(reason, '') NOT IN ({skipped})",
            (agent, since, after, *sorted(NOT_COUNTED)),
        ).fetchone()
        return int(row[0])

    def marks(
        self, agent: str, session: str | None, seconds: float, *, any_session: bool = False
    ) -> Sequence[MarkEvent]:
        found = self._standing(
            ("kind = 'mark'", ()),
            ("agent = ?", agent),
            (self._SAME_SESSION, None if any_session else (session,)),
            ("ts > ?", self.since(seconds)),
        )
        return [e for e in reversed(found) if isinstance(e, MarkEvent)]

    def events(self, kinds: Collection[str], *, limit: int) -> Sequence[LedgerEvent]:
        wanted = sorted(set(kinds) & EVENT_TYPES.keys())
        if not wanted or limit <= 0:
            return []
        marks = ", ".join("?" * len(wanted))
        where = f"id IN (SELECT id FROM entries WHERE kind IN ({marks}) ORDER BY id DESC LIMIT ?)"  # noqa: S608
        return self._made(queries.events_where(self._conn, where, [*wanted, limit]))

    def revoked(self, jti: str) -> bool:
        row = self._conn.execute(
            f"SELECT 1 FROM entries INDEXED BY entries_revoked WHERE {REVOKED} "  # noqa: S608
            "AND json_extract(payload, '$.jti') = ? LIMIT 1",
            (jti,),
        ).fetchone()
        return row is not None

    def append(self, event: LedgerEvent) -> None:
        self.queued.append(event.row())

    # -- for the store's budget tallies -----------------------------------------------------------

    def allowed(
        self, server: str, tool: str, *, after_id: int = 0, seconds: float | None = None
    ) -> list[tuple[int, str, str, str, str | None, object]]:
        """(id, ts, call id, agent, session, arguments) of the allow decisions for server and tool with an
        id above `after_id` (and, with `seconds`, decided in `(now - seconds, now]`), in id order:
        whatever the grant, agent, policy or outcome."""
        # Without `seconds` the rows are the few appended since `after_id`: the unary `+` keeps
        # SQLite on the id range instead of the (server, tool, ts) index, which would read every
        # row the tool ever had and make each call slower as the ledger grows.
        on = "server = ? AND tool = ?" if seconds is not None else "+server = ? AND +tool = ?"
        sql = (
            f"SELECT id, ts, call_id, agent, session, arguments FROM entries WHERE id > ? AND {on} "  # noqa: S608
            "AND kind = 'decision' AND decision = 'allow'"
        )
        params: list[object] = [after_id, server, tool]
        if seconds is not None:
            sql += " AND ts > ?"
            params.append(self.since(seconds))
        rows = self._conn.execute(sql + " ORDER BY id", params)
        return [(i, ts, c, a, s, loads(args)) for i, ts, c, a, s, args in rows]

    def outcome_of(self, call_id: str) -> str | None:
        """The first outcome recorded for a call, or None."""
        row = self._conn.execute(
            "SELECT outcome FROM entries WHERE call_id = ? AND kind = 'outcome' ORDER BY id LIMIT 1",
            (call_id,),
        ).fetchone()
        return None if row is None else row[0]

    def since(self, seconds: float) -> str:
        """The timestamp `seconds` before now, in the ledger's format."""
        return format_ts(self.now - timedelta(seconds=seconds))

    def last_id(self) -> int:
        """The last entry's id in this transaction's view (read once: the store's lock holds it)."""
        if self._last is None:
            self._last = queries.last_id(self._conn)
        return self._last

    def _standing(self, *conditions: tuple[str, object]) -> list[LedgerEvent]:
        """Activation, lockout, unlock or mark entries, oldest first, read through their index."""
        where, params = queries.where(*conditions)
        return self._made(
            queries.events_where(self._conn, f"{STANDING} AND {where}", params, index="entries_standing")
        )

    def _events(
        self, kind: str, server: str | None, tool: str | None, agent: str | None
    ) -> list[LedgerEvent]:
        where, params = queries.where(
            ("kind = ?", kind), ("server = ?", server), ("tool = ?", tool), ("agent = ?", agent)
        )
        return self._made(queries.events_where(self._conn, where, params))

    @staticmethod
    def _made(events: Sequence[queries.Event]) -> list[LedgerEvent]:
        return [
            EVENT_TYPES[e.kind](
                payload=e.payload,
                agent=e.agent,
                session=e.session,
                server=e.server,
                tool=e.tool,
                call_id=e.call_id,
                policy_hash=e.policy_hash,
                ts=e.ts,
            )
            for e in events
            if isinstance(e.payload, dict)  # written by hand; verify says so
        ]
