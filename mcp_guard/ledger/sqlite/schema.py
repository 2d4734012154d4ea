"""The ledger's SQLite file: schema and migrations (each one a step of the schema version), opening
and configuring connections, the wording of SQLite errors, and the background checkpoint. Imports
nothing from mcp_guard but errors and ledger.sqlite.verify (the triggers); must not import the
engine or the store (which import this)."""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import quote

from sqlite_utils import Database, Migrations

from mcp_guard.errors import LedgerError
from mcp_guard.ledger.sqlite.verify import TRIGGERS

CHECKPOINT_EVERY = 0.5  # seconds between background checkpoints
BACKSTOP_PAGES = 16384  # SQLite's own checkpoint, when the background one falls this far behind (64 MiB)
MIGRATIONS = Migrations("mcp_guard_ledger")
_MIGRATION_NAMES = (
    "0001_entries",
    "0002_method",
    "0003_standing",
    "0004_credential",
    "0005_invocations_in_order",
    "0006_name",
)  # in order, one per function registered below
SCHEMA_VERSION = len(_MIGRATION_NAMES)
"""Kept in the file's `PRAGMA user_version` (0 in a file from before versions were kept: 1)."""


@MIGRATIONS(name=_MIGRATION_NAMES[0])
def _create_entries(db: Database) -> None:
    # AUTOINCREMENT keeps the highest id ever used in sqlite_sequence, so verify can tell a cut-off tail.
    db.execute(
        "CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, kind TEXT NOT NULL, "
        "call_id TEXT, agent TEXT, session TEXT, server TEXT, tool TEXT, arguments TEXT, decision TEXT, "
        "reason TEXT, detail TEXT, outcome TEXT, duration_ms REAL, policy_hash TEXT, payload TEXT, "
        "prev_hash TEXT NOT NULL, entry_hash TEXT NOT NULL)"
    )
    entries = db.table("entries")
    entries.create_index(["call_id", "kind"], index_name="entries_call_id")
    entries.create_index(["agent"], index_name="entries_agent")
    entries.create_index(["server", "tool", "ts"], index_name="entries_server_tool_ts")
    # One decision per call: a reused call_id is a caller bug and must not make outcomes ambiguous.
    db.execute("CREATE UNIQUE INDEX entries_decision ON entries (call_id) WHERE kind = 'decision'")
    for sql in TRIGGERS.values():
        db.execute(sql)
    _create_invocations(db, "")


@MIGRATIONS(name=_MIGRATION_NAMES[1])
def _add_method(db: Database) -> None:
    # The MCP method a decision was about. Rows written before it have none (no row is ever
    # rewritten, and their hash is v1): the view reads them as tools/call, all they could be.
    db.execute("ALTER TABLE entries ADD COLUMN method TEXT")
    db.execute("DROP VIEW invocations")
    _create_invocations(db, "coalesce(d.method, 'tools/call') AS method, ")
    db.execute("PRAGMA user_version = 2")


STANDING = "kind IN ('activation', 'lockout', 'mark', 'unlock')"
"""The entries an agent's standing is made of; a query on `entries_standing` repeats this term
as written (SQLite uses a partial index only for a query whose WHERE contains its WHERE)."""
DENIED = "decision = 'deny'"
"""Likewise for `entries_denials`: the refusals a lockout counts, by agent and time."""


@MIGRATIONS(name=_MIGRATION_NAMES[2])
def _add_standing(db: Database) -> None:
    # Small partial indexes, so the escalation rules read only the rows they need: activations,
    # lockouts and marks by agent (and session, time); refusals by agent and time.
    db.execute(f"CREATE INDEX entries_standing ON entries (kind, agent, session, ts) WHERE {STANDING}")
    db.execute(f"CREATE INDEX entries_denials ON entries (agent, ts) WHERE {DENIED}")
    db.execute("PRAGMA user_version = 3")


REVOKED = "kind = 'revocation'"
"""Likewise for `entries_revoked`: the token revocations."""
METHOD, CREDENTIAL = "coalesce(d.method, 'tools/call') AS method, ", "d.credential AS credential, "
NAME = "d.name AS name, "


@MIGRATIONS(name=_MIGRATION_NAMES[3])
def _add_credential(db: Database) -> None:
    # Which credential made each call (`stdio`, `key:...`, `token:<jti>`, `oauth:<subject>:<jti>`),
    # never the credential itself. Rows written before it have none, and are hashed as before.
    db.execute("ALTER TABLE entries ADD COLUMN credential TEXT")
    db.execute("DROP VIEW invocations")
    _create_invocations(db, METHOD, CREDENTIAL)
    # Every request with a token asks whether its id was revoked: it reads the revocations alone
    # (few: an operator writes each by hand). An index on the payload's jti would need a JSON
    # function in the schema, which a connection with trusted_schema off refuses.
    db.execute(f"CREATE INDEX entries_revoked ON entries (id) WHERE {REVOKED}")
    db.execute("PRAGMA user_version = 4")


@MIGRATIONS(name=_MIGRATION_NAMES[4])
def _order_invocations(db: Database) -> None:
    # `select * from invocations` lists calls in the order they were decided, as `ledger tail` does.
    db.execute("DROP VIEW invocations")
    _create_invocations(db, METHOD, CREDENTIAL, " ORDER BY d.id")
    db.execute("PRAGMA user_version = 5")


@MIGRATIONS(name=_MIGRATION_NAMES[5])
def _add_name(db: Database) -> None:
    # The name the client called (`billing__refund`), beside the server and tool it resolved to:
    # what `ledger tail --tool` finds and `stats` counts by. Older rows have none (hashed as before).
    db.execute("ALTER TABLE entries ADD COLUMN name TEXT")
    db.execute("DROP VIEW invocations")
    _create_invocations(db, METHOD, CREDENTIAL + NAME, " ORDER BY d.id")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _create_invocations(db: Database, method: str, credential: str = "", order: str = "") -> None:
    db.create_view(
        "invocations",
        "SELECT d.id AS id, d.call_id AS call_id, d.ts AS ts, d.agent AS agent, d.session AS session, "  # noqa: S608
        f"{method}d.server AS server, d.tool AS tool, d.arguments AS arguments, d.decision AS decision, "
        f"d.reason AS reason, d.detail AS detail, d.policy_hash AS policy_hash, {credential}"
        "o.id AS outcome_id, "
        "o.ts AS outcome_ts, o.outcome AS outcome, o.duration_ms AS duration_ms, o.detail AS outcome_detail "
        "FROM entries AS d LEFT JOIN entries AS o ON o.id = (SELECT min(x.id) FROM entries AS x "
        f"WHERE x.call_id = d.call_id AND x.kind = 'outcome') WHERE d.kind = 'decision'{order}",
    )


_PROBLEMS = {
    "SQLITE_FULL": "disk is full",
    "SQLITE_READONLY": "ledger is read-only",
    "SQLITE_CANTOPEN": "cannot open the file",
    "SQLITE_NOTADB": "not a SQLite database",
    "SQLITE_CORRUPT": "database is corrupt",
}


def describe(exc: sqlite3.Error, busy_timeout: float) -> str:
    """What went wrong, for the person who must fix it."""
    name = getattr(exc, "sqlite_errorname", "").split("_")
    if name[:2] == ["SQLITE", "BUSY"] or "locked" in str(exc):
        return locked(busy_timeout)
    problem = _PROBLEMS.get("_".join(name[:2]))
    return f"{problem} ({exc})" if problem else str(exc)


def locked(busy_timeout: float) -> str:
    return f"ledger is locked by another writer (waited {busy_timeout:g} s)"


class Checkpointer:
    """Copies the write-ahead log back into the ledger file from a thread of its own, so that a
    commit never pays for it: SQLite's automatic checkpoint runs inside the commit that crosses
    its threshold and fsyncs twice, even with synchronous = NORMAL. PASSIVE never blocks a writer
    or a reader; one that cannot finish (a reader holds an old snapshot) is simply tried again."""

    def __init__(self, file: Path, every: float) -> None:
        self._conn = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            # Busy with another process's checkpoint, or the file went away: next time.
            with suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


def connect(path: Path, target: str, busy_timeout: float, *, uri: bool) -> sqlite3.Connection:
    if not path.parent.is_dir():
        msg = f"{path}: directory {str(path.parent)!r} does not exist"
        raise LedgerError(msg)
    if path.is_dir():
        msg = f"{path}: is a directory"
        raise LedgerError(msg)
    try:
        return sqlite3.connect(
            target, timeout=busy_timeout, isolation_level=None, check_same_thread=False, uri=uri
        )
    except sqlite3.Error as exc:
        msg = f"{path}: {describe(exc, busy_timeout)}"
        raise LedgerError(msg) from exc


@contextmanager
def closing_on_error(conn: sqlite3.Connection, path: Path, busy_timeout: float) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        conn.close()
        msg = f"{path}: {describe(exc, busy_timeout)}"
        raise LedgerError(msg) from exc
    except BaseException:
        conn.close()
        raise


def readonly_uri(path: Path) -> str:
    return f"file:{quote(str(path.absolute()))}?mode=ro"


def configure(conn: sqlite3.Connection, path: Path, synchronous: int, busy_timeout: float) -> None:
    """Set the pragmas and read them back: libraries and file systems can silently ignore them."""
    conn.execute("PRAGMA trusted_schema = OFF")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    if synchronous == 2 and sys.platform == "darwin":
        conn.execute("PRAGMA fullfsync = ON")  # without it, macOS fsync stops at the drive's cache
    got = tuple(
        conn.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("journal_mode", "synchronous", "busy_timeout")
    )
    want = ("wal", synchronous, int(busy_timeout * 1000))
    if got != want:
        msg = f"{path}: pragmas not applied: journal_mode, synchronous, busy_timeout are {got}, need {want}"
        raise LedgerError(msg)


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    # BEGIN IMMEDIATE even with nothing pending: it proves the file writable at open, and two guards
    # creating one file at once cannot both run a migration.
    db = Database(conn, recursive_triggers=False, execute_plugins=False)
    conn.execute("BEGIN IMMEDIATE")
    try:
        refuse_newer(db, path)
        MIGRATIONS.apply(db)
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def refuse_newer(db: Database, path: Path) -> None:
    unknown = [m.name for m in MIGRATIONS.applied(db) if m.name not in _MIGRATION_NAMES]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if unknown or version > SCHEMA_VERSION:
        msg = f"{path}: written by a newer mcp-guard (schema version {version}, unknown migrations {unknown})"
        raise LedgerError(msg)


def rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # the connection is gone or the transaction already ended; the first error is the one to report
