"""Verify for the SQLite ledger: the triggers that keep entries append-only, and the walk that
recomputes the hash chain in id order on a connection the caller holds. Imports nothing from
mcp_guard but ledger.chain (the hash it recomputes)."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Collection

from mcp_guard.ledger.chain import (
    _JSON,
    COLUMNS,
    HASH_DOMAIN,
    HASH_DOMAIN_V2,
    HASH_DOMAIN_V3,
    HASH_DOMAIN_V4,
    HASHED_COLUMNS,
    OPTIONAL,
    ZERO_HASH,
    VerifyResult,
    chain_break,
    entry_hash,
)

# Created by the migrations and checked by verify: one text for both.
TRIGGERS = {
    f"entries_no_{verb.lower()}": f"CREATE TRIGGER entries_no_{verb.lower()} BEFORE {verb} ON entries "
    "BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END"
    for verb in ("UPDATE", "DELETE")
}

# SQL is only ever built from these constants; every value is a bound parameter.
_CALL, _SPLIT = HASHED_COLUMNS.index("call_id"), HASHED_COLUMNS.index("duration_ms")
_KIND = HASHED_COLUMNS.index("kind")
_FIRST = ", ".join(f"'{n}', {n}" for n in HASHED_COLUMNS[: _CALL + 1])
_BEFORE = ", ".join(f"'{n}', {n}" for n in HASHED_COLUMNS[_CALL + 1 : _SPLIT])
_AFTER = ", ".join(f"'{n}', {n}" for n in HASHED_COLUMNS[_KIND + 1 :])
# duration_ms is the one REAL column (SQLite prints floats differently); credential sits between
# call_id and decision, method and name between kind and outcome, each only when it is not null
# (hash v3, v2, v4): all four are spliced in by Python.
_SELECT_CHAIN = (
    f"SELECT id, entry_hash, prev_hash, json_object({_FIRST}), credential, json_object({_BEFORE}), "  # noqa: S608
    f"duration_ms, json_object('kind', kind), method, name, json_object({_AFTER}) FROM entries "
    "WHERE id > ? ORDER BY id"
)


def verify(conn: sqlite3.Connection, start: tuple[int, str] = (0, ZERO_HASH)) -> VerifyResult:
    """The chain, the triggers and the tail, checked inside the caller's read transaction; from
    `start` (an entry id and its hash, taken as good) on, when given."""
    schema = {name: sql for kind, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master")}
    if "entries" not in schema:
        return VerifyResult(False, 0, None, "there is no entries table", ZERO_HASH)
    damage = []
    for name, sql in TRIGGERS.items():
        if name not in schema:
            damage.append(f"trigger {name!r} is missing, so entries could be edited")
        elif " ".join(str(schema[name]).split()) != sql:
            damage.append(f"trigger {name!r} was altered")
    count, last_id, head, first_bad, problem = walk_chain(conn, start)
    if first_bad is None:
        # The chain cannot see a cut-off tail; AUTOINCREMENT remembers the highest id ever used.
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
        if row is not None and int(row[0]) > last_id:
            first_bad = last_id + 1
            problem = f"entries {last_id + 1}..{row[0]} are missing (the end of the ledger was cut off)"
    problems = [f"entry {first_bad}: {problem}"] if first_bad is not None else []
    problems += damage
    return VerifyResult(not problems, count, first_bad, "; ".join(problems), head)


def walk_chain(
    conn: sqlite3.Connection, start: tuple[int, str] = (0, ZERO_HASH)
) -> tuple[int, int, str, int | None, str]:
    """(good entries, last good id, head hash, first bad id, problem); streams rows in id order,
    after `start` (an entry id and its hash).

    For speed SQLite builds the canonical JSON (its json_object escapes text exactly as Python's json
    does) but for duration_ms, whose float Python prints. A row whose hash does not match is rebuilt
    the defining way, by `entry_hash`, before it is called bad.
    """
    try:
        conn.execute("SELECT json_object()")
    except sqlite3.OperationalError:  # SQLite built without JSON: the same text, built in Python
        conn.create_function("json_object", -1, json_object, deterministic=True)
    sha256, dumps = hashlib.sha256, _JSON
    count, (last_id, head) = 0, start
    columns = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
    select = _SELECT_CHAIN
    for optional in OPTIONAL:
        if optional not in columns:  # a file from before the column: every row null there
            select = select.replace(f", {optional},", ", NULL,")
    cur: sqlite3.Cursor | None = conn.execute(select, (last_id,))
    while True:
        try:
            if cur is not None:
                rows = cur.fetchmany(4096)
            else:
                rows = conn.execute(select + " LIMIT 1", (last_id,)).fetchall()
        except sqlite3.Error as exc:  # text that is not UTF-8, a blob: written by hand
            if cur is not None:  # go on one row a query, to check the rows before it and to name it
                cur = None
                continue
            bad = conn.execute("SELECT min(id) FROM entries WHERE id > ?", (last_id,)).fetchone()[0]
            return count, last_id, head, bad, f"cannot be read ({exc})"
        if not rows:
            return count, last_id, head, None, ""
        for entry_id, stored, prev, first, credential, before, duration, kind, method, name, after in rows:
            if prev != head:  # the hot loop
                return count, last_id, head, entry_id, chain_break(last_id, entry_id)
            try:
                number = "null" if duration is None else dumps(duration)
                tagged = "" if method is None else f',"method":{dumps(method)}'
                named = "" if credential is None else f',"credential":{dumps(credential)}'
                called = "" if name is None else f',"name":{dumps(name)}'
            except (TypeError, ValueError):
                return count, last_id, head, entry_id, "holds a value that is not text or a number"
            middle = f'"duration_ms":{number},{kind[1:-1]}{tagged}{called}'
            text = f"{first[:-1]}{named},{before[1:-1]},{middle},{after[1:]}"
            domain = (
                HASH_DOMAIN_V4
                if name is not None
                else HASH_DOMAIN_V3
                if credential is not None
                else HASH_DOMAIN
                if method is None
                else HASH_DOMAIN_V2
            )
            if (
                sha256(domain + text.encode("utf-8")).hexdigest() != stored
                and row_hash(conn, entry_id, columns) != stored
            ):
                problem = "content does not match its entry_hash (edited, or written by hand)"
                return count, last_id, head, entry_id, problem
            count, last_id, head = count + 1, entry_id, stored


def row_hash(conn: sqlite3.Connection, entry_id: int, columns: Collection[str] = COLUMNS) -> str:
    """The entry's hash built the defining way, by `entry_hash` (`columns`: those the file has)."""
    names = ", ".join(name if name in columns else "NULL" for name in COLUMNS)
    sql = f"SELECT {names} FROM entries WHERE id = ?"  # noqa: S608
    try:
        return entry_hash(conn.execute(sql, (entry_id,)).fetchone())
    except (TypeError, ValueError):
        return ""  # a value JSON cannot hold: no hash matches it


def json_object(*pairs: object) -> str:
    """SQLite's json_object, for a build without JSON support."""
    return _JSON(dict(zip(pairs[::2], pairs[1::2], strict=True)))
