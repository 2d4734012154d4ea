"""`mcp-guard ledger copy --to URL`: a SQLite ledger into an empty PostgreSQL ledger, every entry as
it is (ids, hashes, the columns of whatever schema the file has), so the copy's chain verifies to
the same head hash. The source is verified first, in the same read transaction the rows are read
in; the copy is verified after. Imports nothing from mcp_guard but errors, the ledger's values,
the SQLite store's engine, schema and verify, and its siblings. Also the way back, a snapshot in a
new SQLite file, for `ledger browse`."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from mcp_guard.errors import LedgerError
from mcp_guard.ledger.chain import COLUMNS
from mcp_guard.ledger.postgres import verify
from mcp_guard.ledger.postgres.engine import Engine
from mcp_guard.ledger.sqlite import schema
from mcp_guard.ledger.sqlite.engine import Ledger
from mcp_guard.ledger.sqlite.verify import verify as verify_sqlite


def copy_ledger(path: Path, url: str, where: str, busy_timeout: float = 2.0) -> tuple[int, str]:
    """Copy the SQLite ledger at `path` into the empty PostgreSQL ledger at `url` (created if need be);
    (entries copied, head hash). LedgerError if the source does not verify, the destination is not
    empty, or the copy does not verify to the same head."""
    if not path.is_file():
        msg = f"{path}: no ledger file"
        raise LedgerError(msg)
    source = schema.connect(path, schema.readonly_uri(path), busy_timeout, uri=True)
    with schema.closing_on_error(source, path, busy_timeout):
        source.execute("BEGIN")  # one snapshot: what is verified is what is copied
        checked = verify_sqlite(source)
        if not checked.ok:
            msg = f"{path}: does not verify, so it is not copied: {checked.problem}"
            raise LedgerError(msg)
        engine = Engine.open(url, where)
        try:
            copied = engine.import_rows(_rows(source))
            result = engine.read_raw(verify.verify)
        finally:
            engine.close()
        source.execute("COMMIT")
    source.close()
    if copied != checked.entries or not result.ok or result.head != checked.head:
        msg = f"{where}: the copy does not verify to the source's head {checked.head}: {result.problem}"
        raise LedgerError(msg)
    return copied, result.head


def to_sqlite(url: str, where: str, path: Path) -> int:
    """Write a snapshot of the PostgreSQL ledger at `url` into a new SQLite ledger at `path` (for
    `ledger browse`: Datasette reads SQLite), every entry as it is; how many entries."""
    Ledger.open(path).close()  # the SQLite schema, current
    engine = Engine.open(url, where, readonly=True)
    try:
        rows = engine.read_raw(lambda conn: conn.execute(_SELECT_ALL).fetchall())
    finally:
        engine.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(_INSERT_SQLITE, rows)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return len(rows)


_SELECT_ALL = f"SELECT id, {', '.join(COLUMNS)}, entry_hash FROM entries ORDER BY id"  # noqa: S608
_INSERT_SQLITE = (
    f"INSERT INTO entries (id, {', '.join(COLUMNS)}, entry_hash) "  # noqa: S608
    f"VALUES ({', '.join('?' * (len(COLUMNS) + 2))})"
)


def _rows(conn: sqlite3.Connection) -> Iterator[Sequence[object]]:
    """Every entry in id order: id, COLUMNS (null where the file's schema predates one), entry_hash."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
    names = ", ".join(name if name in have else "NULL" for name in COLUMNS)
    cur = conn.execute(f"SELECT id, {names}, entry_hash FROM entries ORDER BY id")  # noqa: S608
    while rows := cur.fetchmany(2000):
        yield from rows
