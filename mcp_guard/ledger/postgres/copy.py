"""`mcp-guard ledger copy --to URL`: a SQLite ledger into an empty PostgreSQL ledger, every entry as
it is (ids, hashes, the columns of whatever schema the file has), so the copy's chain verifies to
the same head hash. The source is verified first, in the same read transaction the rows are read
in; the copy is verified after. Imports nothing from mcp_guard but errors, the ledger's values,
the SQLite store's schema and verify, and its siblings."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from mcp_guard.errors import LedgerError
from mcp_guard.ledger.chain import COLUMNS
from mcp_guard.ledger.postgres import verify
from mcp_guard.ledger.postgres.engine import Engine
from mcp_guard.ledger.sqlite import schema
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


def _rows(conn: sqlite3.Connection) -> Iterator[Sequence[object]]:
    """Every entry in id order: id, COLUMNS (null where the file's schema predates one), entry_hash."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
    names = ", ".join(name if name in have else "NULL" for name in COLUMNS)
    cur = conn.execute(f"SELECT id, {names}, entry_hash FROM entries ORDER BY id")  # noqa: S608
    while rows := cur.fetchmany(2000):
        yield from rows
