"""Verify, anchors and export for the PostgreSQL ledger: the walk that recomputes the hash chain in
id order (by `entry_hash`, the one definition both stores hash by, so a ledger copied from SQLite
verifies with the same head), the checks that keep it append-only (the triggers, the chain head
against the last entry), and the rows as they are for checkpoints and export. Each runs on a
connection whose snapshot the caller holds. Imports nothing from mcp_guard but the ledger's values
and its siblings."""

from __future__ import annotations

from typing import Any

import psycopg

from mcp_guard.ledger.chain import COLUMNS, ZERO_HASH, Anchor, VerifyResult, chain_break, entry_hash
from mcp_guard.ledger.postgres.schema import TRIGGERS
from mcp_guard.ledger.postgres.window import Connection
from mcp_guard.ledger.sqlite import rows

_SELECT_CHAIN = f"SELECT id, entry_hash, {', '.join(COLUMNS)} FROM entries WHERE id > %s ORDER BY id"  # noqa: S608


def verify(conn: psycopg.Connection[Any], start: tuple[int, str] = (0, ZERO_HASH)) -> VerifyResult:
    """The chain, the triggers and the head, checked inside the caller's read transaction; from
    `start` (an entry id and its hash, taken as good) on, when given."""
    if conn.execute("SELECT to_regclass('entries')").fetchone() in (None, (None,)):
        return VerifyResult(False, 0, None, "there is no entries table", ZERO_HASH)
    damage = []
    enabled = dict(
        conn.execute(
            "SELECT tgname, tgenabled FROM pg_trigger "
            "WHERE tgrelid = 'entries'::regclass AND NOT tgisinternal"
        ).fetchall()
    )
    for name in TRIGGERS:
        if name not in enabled:
            damage.append(f"trigger {name!r} is missing, so entries could be edited")
        elif enabled[name] == "D":
            damage.append(f"trigger {name!r} is disabled, so entries could be edited")
    count, last_id, head, first_bad, problem = walk_chain(conn, start)
    if first_bad is None:
        # The chain cannot see a cut-off tail; the chain head remembers the last id appended.
        row = conn.execute("SELECT last_id, entry_hash FROM ledger_head").fetchone()
        if row is not None and int(row[0]) > last_id:
            first_bad = last_id + 1
            problem = f"entries {last_id + 1}..{row[0]} are missing (the end of the ledger was cut off)"
        elif row is not None and (int(row[0]), row[1]) != (last_id, head) and last_id > start[0]:
            damage.append(f"the chain head names entry {row[0]} ({row[1]}), not the last entry {last_id}")
    problems = [f"entry {first_bad}: {problem}"] if first_bad is not None else []
    problems += damage
    return VerifyResult(not problems, count, first_bad, "; ".join(problems), head)


def walk_chain(
    conn: psycopg.Connection[Any], start: tuple[int, str] = (0, ZERO_HASH)
) -> tuple[int, int, str, int | None, str]:
    """(good entries, last good id, head hash, first bad id, problem); streams rows in id order
    through a server-side cursor, after `start` (an entry id and its hash)."""
    count, (last_id, head) = 0, start
    with conn.cursor(name="mcp_guard_verify") as cur:
        cur.itersize = 4096
        cur.execute(_SELECT_CHAIN, (last_id,))
        for entry_id, stored, *values in cur:
            prev = values[COLUMNS.index("prev_hash")]
            if prev != head:
                return count, last_id, head, entry_id, chain_break(last_id, entry_id)
            try:
                good = entry_hash(values) == stored
            except (TypeError, ValueError):
                return count, last_id, head, entry_id, "holds a value that is not text or a number"
            if not good:
                problem = "content does not match its entry_hash (edited, or written by hand)"
                return count, last_id, head, entry_id, problem
            count, last_id, head = count + 1, entry_id, stored
    return count, last_id, head, None, ""


def anchor(
    conn: psycopg.Connection[Any], upto: int | None = None, since: Anchor | None = None
) -> Anchor | None:
    """What the SQLite store's `rows.anchor` returns (its SQL is plain), read from `conn`."""
    return rows.anchor(Connection(conn), upto, since)  # type: ignore[arg-type]


def entries(conn: psycopg.Connection[Any], after: int, limit: int) -> list[dict[str, object]]:
    """What the SQLite store's `rows.entries` returns, read from `conn` (whose schema is current)."""
    return rows.exported(Connection(conn).execute(rows.SELECT_ENTRIES, (after, limit)))
