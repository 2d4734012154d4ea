"""The SQLite ledger's rows as they are, for what leaves the host: anchors (where the ledger stands,
for signed checkpoints) and whole entries with their hashes (for export), each read on a read-only
connection of its own. Imports nothing from mcp_guard but errors, the ledger's values and its
siblings in ledger.sqlite."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mcp_guard.ledger.chain import Anchor
from mcp_guard.ledger.sqlite import schema
from mcp_guard.ledger.sqlite.queries import loads

T = TypeVar("T")
EXPORTED = (
    "id", "ts", "kind", "call_id", "agent", "session", "method", "server", "tool", "arguments",
    "decision", "reason", "detail", "outcome", "duration_ms", "policy_hash", "payload", "credential",
    "name", "prev_hash", "entry_hash",
)  # fmt: skip
"""An exported entry's keys: every column of the entries table, id and both hashes included."""
_CALL = ("agent", "session", "method", "server", "tool")
SELECT_ENTRIES = (
    f"SELECT {', '.join('e.' + name for name in EXPORTED)}, {', '.join('d.' + name for name in _CALL)} "  # noqa: S608
    "FROM entries AS e LEFT JOIN entries AS d ON e.kind = 'outcome' AND d.call_id = e.call_id "
    "AND d.kind = 'decision' WHERE e.id > ? ORDER BY e.id LIMIT ?"
)


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
    payload parsed from their JSON); an outcome also gets its decision's agent, session, method,
    server and tool under `call` (not part of the entry, nor of its hash)."""
    select = SELECT_ENTRIES
    columns = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
    for column in ("method", "credential", "name"):  # an older schema that no guard has migrated
        if column not in columns:
            select = select.replace(f"e.{column},", "NULL,").replace(f"d.{column},", "NULL,")
    return exported(conn.execute(select, (after, limit)))


def exported(rows: Iterable[Sequence[Any]]) -> list[dict[str, object]]:
    """The rows of `SELECT_ENTRIES` as `entries` returns them."""
    found = []
    for row in rows:
        entry: dict[str, object] = dict(zip(EXPORTED, row[: len(EXPORTED)], strict=True))
        entry["arguments"], entry["payload"] = loads(entry["arguments"]), loads(entry["payload"])  # type: ignore[arg-type]
        if entry["kind"] == "outcome":
            entry["call"] = dict(zip(_CALL, row[len(EXPORTED) :], strict=True))
        found.append(entry)
    return found
