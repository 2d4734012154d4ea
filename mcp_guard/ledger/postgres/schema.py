"""The PostgreSQL ledger's schema: its tables (the entries, the one-row chain head that serialises
appends, the schema version), the triggers that keep entries append-only, the migrations, opening
connections and the wording of PostgreSQL errors. Imports nothing from mcp_guard but errors and the
ledger's chain; must not import the engine or the store (which import this)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import errors as pg_errors

from mcp_guard.errors import LedgerError
from mcp_guard.ledger.chain import ZERO_HASH

CHANNEL = "mcp_guard_ledger"
"""NOTIFY'd with the last entry id by every transaction that appends: what `follow` listens to."""
REFUSE = "ledger entries are append-only"
TRIGGERS = {
    "entries_no_update": "BEFORE UPDATE ON entries FOR EACH ROW",
    "entries_no_delete": "BEFORE DELETE ON entries FOR EACH ROW",
    "entries_no_truncate": "BEFORE TRUNCATE ON entries FOR EACH STATEMENT",
}
"""Created by the first migration and checked by verify."""

_ENTRIES = """
CREATE TABLE entries (
    id bigint PRIMARY KEY, ts text NOT NULL, kind text NOT NULL, call_id text, agent text,
    session text, method text, server text, tool text, arguments text, decision text, reason text,
    detail text, outcome text, duration_ms double precision, policy_hash text, payload text,
    credential text, name text, prev_hash text NOT NULL, entry_hash text NOT NULL)
"""
# The chain head: the last entry's id and hash. Every write transaction locks this one row first,
# so appends are serialised across every replica, ids are assigned in commit order (never from a
# sequence, whose values are not), and what a decision reads cannot change before it commits.
_HEAD = """
CREATE TABLE ledger_head (
    one boolean PRIMARY KEY DEFAULT true CHECK (one), last_id bigint NOT NULL, entry_hash text NOT NULL)
"""
_REFUSE_FN = f"""
CREATE FUNCTION mcp_guard_append_only() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN RAISE EXCEPTION '{REFUSE}'; END $fn$
"""
_INVOCATIONS = """
CREATE VIEW invocations AS SELECT d.id AS id, d.call_id AS call_id, d.ts AS ts, d.agent AS agent,
    d.session AS session, coalesce(d.method, 'tools/call') AS method, d.server AS server, d.tool AS tool,
    d.arguments AS arguments, d.decision AS decision, d.reason AS reason, d.detail AS detail,
    d.policy_hash AS policy_hash, d.credential AS credential, d.name AS name, o.id AS outcome_id,
    o.ts AS outcome_ts, o.outcome AS outcome, o.duration_ms AS duration_ms, o.detail AS outcome_detail
FROM entries AS d LEFT JOIN entries AS o ON o.id = (SELECT min(x.id) FROM entries AS x
    WHERE x.call_id = d.call_id AND x.kind = 'outcome') WHERE d.kind = 'decision' ORDER BY d.id
"""
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        _ENTRIES,
        "CREATE INDEX entries_call_id ON entries (call_id, kind)",
        "CREATE INDEX entries_agent ON entries (agent)",
        "CREATE INDEX entries_server_tool_ts ON entries (server, tool, ts)",
        "CREATE UNIQUE INDEX entries_decision ON entries (call_id) WHERE kind = 'decision'",
        "CREATE INDEX entries_standing ON entries (kind, agent, session, ts) "
        "WHERE kind IN ('activation', 'lockout', 'mark', 'unlock')",
        "CREATE INDEX entries_denials ON entries (agent, ts) WHERE decision = 'deny'",
        "CREATE INDEX entries_revoked ON entries (id) WHERE kind = 'revocation'",
        _HEAD,
        f"INSERT INTO ledger_head (last_id, entry_hash) VALUES (0, '{ZERO_HASH}')",  # noqa: S608
        _REFUSE_FN,
        *(
            f"CREATE TRIGGER {name} {when} EXECUTE FUNCTION mcp_guard_append_only()"
            for name, when in TRIGGERS.items()
        ),
        _INVOCATIONS,
    ),
)
"""One tuple of statements a schema version, in order; the version is how many were applied."""
SCHEMA_VERSION = len(MIGRATIONS)
_LOCK_KEY = 0x6D63_7067  # pg_advisory_xact_lock: two guards creating one ledger at once take turns


def connect(url: str, where: str, *, write: bool, full: bool = False) -> psycopg.Connection[Any]:
    """A connection in autocommit mode (the engine says BEGIN and COMMIT), with timeouts that keep a
    lost or stuck server from hanging a call; LedgerError if the server cannot be reached."""
    try:
        conn = psycopg.connect(
            url, autocommit=True, connect_timeout=5, application_name="mcp-guard",
            keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
        )  # fmt: skip
    except psycopg.Error as exc:
        msg = f"{where}: {describe(exc)}"
        raise LedgerError(msg) from exc
    try:
        conn.execute("SET statement_timeout = '10s'")
        conn.execute("SET lock_timeout = '5s'")  # waiting for the chain head behind a stuck writer
        # `full`: each commit waits until the server has flushed it to disk (and, where the server
        # names synchronous standbys, until they have it). `normal`: a commit is in the server's
        # memory and WAL buffers, flushed by its WAL writer within a few hundred milliseconds; it
        # survives the guard's crash at once and the server's or host's after that flush, as a
        # SQLite commit without fsync does.
        if write:
            conn.execute("SET synchronous_commit = on" if full else "SET synchronous_commit = off")
    except psycopg.Error as exc:
        conn.close()
        msg = f"{where}: {describe(exc)}"
        raise LedgerError(msg) from exc
    return conn


def version(conn: psycopg.Connection[Any]) -> int | None:
    """The schema version of the ledger `conn` reaches; None when it has none yet."""
    row = conn.execute("SELECT to_regclass('mcp_guard_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    found = conn.execute("SELECT max(version) FROM mcp_guard_schema").fetchone()
    return int(found[0]) if found and found[0] is not None else 0


def migrate(conn: psycopg.Connection[Any], where: str) -> None:
    """Create or bring the schema up to SCHEMA_VERSION in one transaction; refuse a newer one. A
    schema already current is left alone, so a role that may not create tables can open it."""
    found = version(conn)
    if found is not None:
        refuse_newer(found, where)
        if found == SCHEMA_VERSION:
            return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS mcp_guard_schema (version integer PRIMARY KEY, applied text)"
        )
        have = version(conn) or 0
        refuse_newer(have, where)
        for number, steps in enumerate(MIGRATIONS[have:], start=have + 1):
            for sql in steps:
                conn.execute(sql)
            conn.execute(
                "INSERT INTO mcp_guard_schema VALUES (%s, to_char(now() AT TIME ZONE 'UTC', "
                '\'YYYY-MM-DD"T"HH24:MI:SS"Z"\'))',
                (number,),
            )


def refuse_newer(have: int, where: str) -> None:
    if have > SCHEMA_VERSION:
        msg = (
            f"{where}: written by a newer mcp-guard (schema version {have}, this one knows {SCHEMA_VERSION})"
        )
        raise LedgerError(msg)


_PROBLEMS = {
    pg_errors.ReadOnlySqlTransaction: "ledger is read-only",
    pg_errors.DiskFull: "disk is full",
    pg_errors.OutOfMemory: "out of memory",
    pg_errors.InsufficientPrivilege: "permission denied",
    pg_errors.LockNotAvailable: "ledger is locked by another writer (waited 5 s)",
    pg_errors.QueryCanceled: "the server took too long (statement_timeout)",
    pg_errors.UniqueViolation: "an entry with this call id and kind is already recorded",
}


def describe(exc: psycopg.Error) -> str:
    """What went wrong, for the person who must fix it: one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    for kind, problem in _PROBLEMS.items():
        if isinstance(exc, kind):
            return f"{problem} ({text})"
    if isinstance(exc, psycopg.OperationalError):
        return f"cannot reach the ledger's server ({text})"
    return text
