"""The SQLite ledger's rows as they are, for what leaves the host: anchors (where the ledger stands,
for signed checkpoints) and whole entries with their hashes (for export), each read on a read-only
connection of its own. Imports nothing from mcp_guard but errors, the ledger's values and its
siblings in ledger.sqlite."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mcp_guard.ledger.chain import Anchor
from mcp_guard.ledger.sqlite import queries, schema
from mcp_guard.ledger.sqlite.queries import loads

T = TypeVar("T")
EXPORTED = (
    "id", "ts", "kind", "call_id", "agent", "session", "method", "server", "tool", "arguments",
    "decision", "reason", "detail", "outcome", "duration_ms", "policy_hash", "payload", "prev_hash",
    "entry_hash",
)  # fmt: skip
"""An exported entry's keys: every column of the entries table, id and both hashes included."""
_SELECT = f"SELECT {', '.join(EXPORTED)} FROM entries WHERE id > ? ORDER BY id LIMIT ?"  # noqa: S608


def snapshot(path: Path, fn: Callable[[sqlite3.Connection], T], busy_timeout: float = 2.0) -> T:
    """`fn` run inside one read transaction on a read-only connection of its own."""
    file = path.absolute()
    conn = schema.connect(file, schema.readonly_uri(file), busy_timeout, uri=True)
    with schema.closing_on_error(conn, path, busy_timeout):
        conn.execute("BEGIN")
        result = fn(conn)
        conn.execute("COMMIT")
    conn.close()
    return result


def anchor(conn: sqlite3.Connection, upto: int | None = None, since: Anchor | None = None) -> Anchor | None:
    """The ledger as of entry `upto` (default: its last entry); None if it is empty or has no such
    entry. The count starts from `since`, an earlier anchor of the same ledger, when one is given
    (so a checkpoint costs what was appended since the last one, not a count of the whole file)."""
    first = conn.execute("SELECT entry_hash FROM entries ORDER BY id LIMIT 1").fetchone()
    if first is None:
        return None
    if upto is None:
        row = conn.execute("SELECT id, entry_hash FROM entries ORDER BY id DESC LIMIT 1").fetchone()
    else:
        row = conn.execute("SELECT id, entry_hash FROM entries WHERE id = ?", (upto,)).fetchone()
    if row is None:
        return None
    ledger, entry_id = str(first[0]), int(row[0])
    low, counted = 0, 0
    if since is not None and since.ledger == ledger and since.entry_id <= entry_id:
        low, counted = since.entry_id, since.entries
    sql = "SELECT count(*) FROM entries WHERE id > ? AND id <= ?"
    counted += int(conn.execute(sql, (low, entry_id)).fetchone()[0])
    return Anchor(ledger, entry_id, str(row[1]), counted)


def entries(conn: sqlite3.Connection, after: int, limit: int) -> list[dict[str, object]]:
    """Up to `limit` entries with an id above `after`, oldest first, every column (arguments and
    payload parsed from their JSON)."""
    select = _SELECT if queries.has_method(conn) else _SELECT.replace(" method,", " NULL,")
    found = []
    for row in conn.execute(select, (after, limit)):
        entry = dict(zip(EXPORTED, row, strict=True))
        entry["arguments"], entry["payload"] = loads(entry["arguments"]), loads(entry["payload"])
        found.append(entry)
    return found
