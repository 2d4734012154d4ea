"""The SQLite ledger's read side: invocations, updates, events and stats, as functions on a
connection whose snapshot (and lock) the caller holds. Imports nothing from mcp_guard but the
ledger's values (the engine imports this)."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mcp_guard.ledger.base import ALL, Filter, Invocation

# SQL is only ever built from these constants; every value is a bound parameter.
_SELECT_INVOCATIONS = (
    "SELECT id, call_id, ts, agent, session, method, server, tool, arguments, decision, reason, detail, "
    "outcome, duration_ms, outcome_detail, policy_hash, credential, name FROM invocations WHERE "
)
# A file no guard has migrated yet (a reader never migrates): before schema 2 every decision is a
# tools/call; before schema 4 no credential was recorded.
_SELECT_INVOCATIONS_V5 = _SELECT_INVOCATIONS.replace(" name FROM", " NULL FROM")
_SELECT_INVOCATIONS_V3 = _SELECT_INVOCATIONS_V5.replace(" credential,", " NULL,")
_SELECT_INVOCATIONS_V1 = _SELECT_INVOCATIONS_V3.replace(" method,", " 'tools/call',")
_SELECT_EVENTS = (
    "SELECT id, ts, kind, call_id, agent, session, server, tool, payload, policy_hash FROM entries "
)


@dataclass(frozen=True, slots=True)
class Event:
    """A policy, pin or approval entry."""

    id: int
    ts: str
    kind: str
    call_id: str | None
    agent: str | None
    session: str | None
    server: str | None
    tool: str | None
    payload: object
    policy_hash: str | None


def loads(text: str | None) -> object:
    """A stored JSON column as a value; text that is not JSON as it is."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text  # written by hand; verify says so


def last_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0])


def invocation_select(conn: sqlite3.Connection) -> str:
    """How to read invocations from this file: its entries table may predate the method column
    (schema 2), the credential column (schema 4) or the name column (schema 6)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
    if "method" not in columns:
        return _SELECT_INVOCATIONS_V1
    if "credential" not in columns:
        return _SELECT_INVOCATIONS_V3
    return _SELECT_INVOCATIONS if "name" in columns else _SELECT_INVOCATIONS_V5


def invocations(
    conn: sqlite3.Connection,
    *,
    select: str = _SELECT_INVOCATIONS,
    limit: int | None = None,
    after_id: int | None = None,
    until_id: int | None = None,
    where: Filter = ALL,
) -> list[Invocation]:
    """What `Ledger.invocations` returns, read from `conn` (`select`: the file's invocation_select)."""
    where_sql, params = _where(where, ("id > ?", after_id), ("id <= ?", until_id))
    sql = select + where_sql
    if limit is not None:
        sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?) AS recent"  # noqa: S608
        params.append(limit)
    return [_invocation(row) for row in conn.execute(sql + " ORDER BY id", params)]


def updates(
    conn: sqlite3.Connection, after_id: int, *, select: str = _SELECT_INVOCATIONS, where: Filter = ALL
) -> tuple[int, list[Invocation]]:
    """What `Ledger.updates` returns, read from `conn`."""
    high = last_id(conn)
    if high <= after_id:
        return after_id, []
    touched = (
        "call_id IN (SELECT call_id FROM entries WHERE id > ? AND id <= ? "
        "AND kind IN ('decision', 'outcome'))"
    )
    where_sql, params = _where(where, (touched, (after_id, high)))
    rows = conn.execute(select + where_sql + " ORDER BY id", params)
    return high, [_invocation(row) for row in rows]


def events(
    conn: sqlite3.Connection,
    kind: str,
    *,
    server: str | None = None,
    tool: str | None = None,
    after_id: int | None = None,
) -> list[Event]:
    """What `Ledger.events` returns, read from `conn`."""
    where_sql, params = where(
        ("kind = ?", kind), ("server = ?", server), ("tool = ?", tool), ("id > ?", after_id)
    )
    return events_where(conn, where_sql, params)


def events_where(
    conn: sqlite3.Connection, where_sql: str, params: Sequence[object], *, index: str | None = None
) -> list[Event]:
    """The entries matching `where` (SQL built from constants, values bound), oldest first; read
    through `index` when one is named."""
    using = f"INDEXED BY {index} " if index else ""
    rows = conn.execute(f"{_SELECT_EVENTS}{using}WHERE {where_sql} ORDER BY id", params)
    return [Event(i, ts, k, c, a, se, s, t, loads(p), h) for i, ts, k, c, a, se, s, t, p, h in rows]


def stats(conn: sqlite3.Connection, since: str | None) -> dict[str, Any]:
    """What `Ledger.stats` returns, read from `conn`; `since` is a timestamp in the ledger's format."""
    when, params = where(("ts >= ?", since))
    base = f"FROM entries WHERE kind = 'decision' AND {when}"
    groups = {
        "by_agent": "agent",
        # The name clients called, where it was kept: one key a tool, granted or not.
        "by_tool": "coalesce(name, CASE WHEN server IS NULL THEN tool ELSE server || '.' || tool END)",
        "by_decision": "decision",
        "by_reason": "reason",
    }
    result: dict[str, Any] = {"since": since}
    result["invocations"] = conn.execute(f"SELECT count(*) {base}", params).fetchone()[0]
    for key, expr in groups.items():
        sql = f"SELECT {expr} AS k, count(*) {base} AND {expr} IS NOT NULL GROUP BY k"
        result[key] = _ranked(conn.execute(sql, params))
    sql = "SELECT coalesce(outcome, 'none') AS k, count(*) FROM invocations WHERE decision = 'allow'"
    result["by_outcome"] = _ranked(conn.execute(f"{sql} AND {when} GROUP BY k", params))
    sql = (
        "SELECT server || '.' || tool, duration_ms FROM invocations "  # noqa: S608
        f"WHERE decision = 'allow' AND duration_ms IS NOT NULL AND {when}"
    )
    durations: dict[str, list[float]] = {}
    for key, ms in conn.execute(sql, params):
        durations.setdefault(str(key), []).append(float(ms))
    result["duration_ms"] = {key: _percentiles(values) for key, values in sorted(durations.items())}
    return result


def _percentiles(values: list[float]) -> dict[str, float]:
    """p50 and p95 (nearest rank) of a tool's call durations, and how many there were."""
    ordered = sorted(values)

    def rank(p: int) -> float:
        return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)], 3)

    return {"count": len(ordered), "p50": rank(50), "p95": rank(95)}


def _where(f: Filter, *more: tuple[str, object]) -> tuple[str, list[object]]:
    """The SQL of a Filter over the invocations view (and more conditions), with its parameters."""
    by_tool = None if f.tool is None else (f.tool, f.tool, f.tool)
    outcome = f.outcome if f.outcome != "none" else None
    return where(
        ("agent = ?", f.agent),
        ("(tool = ? OR server || '.' || tool = ? OR name = ?)", by_tool),
        ("decision = ?", f.decision),
        ("server = ?", f.server),
        ("session = ?", f.session),
        ("reason = ?", f.reason),
        ("outcome = ?", outcome),
        ("outcome IS NULL", () if f.outcome == "none" else None),
        ("ts >= ?", f.since),
        ("ts <= ?", f.until),
        *more,
    )


def where(*conditions: tuple[str, object]) -> tuple[str, list[object]]:
    """The conditions ANDed and their parameters (a tuple for several); those whose value is None left out."""
    sql: list[str] = []
    params: list[object] = []
    for condition, value in conditions:
        if value is not None:
            sql.append(condition)
            params += value if isinstance(value, tuple) else [value]
    return " AND ".join(sql) or "1 = 1", params


def _invocation(row: Sequence[Any]) -> Invocation:
    values = list(row)
    values[8] = loads(values[8])
    return Invocation(*values)


def _ranked(rows: sqlite3.Cursor) -> dict[str, int]:
    return {str(k): int(n) for k, n in sorted(rows, key=lambda kn: (-kn[1], str(kn[0])))}
