"""The ledger's hash chain: the canonical hash of an entry, and verify's walk over the chain.
Stdlib only: imports nothing from mcp_guard (the stores import this)."""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring

ZERO_HASH = "0" * 64
# Domain separation: an entry hash never equals a hash of the same JSON made for another purpose.
HASH_DOMAIN = b"mcp-guard ledger entry v1\x00"

# Every stored column but id and entry_hash, sorted: the keys of the canonical JSON that is hashed.
# Fixed for hash v1: a column added later is not hashed unless HASH_DOMAIN moves to v2.
HASHED_COLUMNS = (
    "agent", "arguments", "call_id", "decision", "detail", "duration_ms", "kind", "outcome",
    "payload", "policy_hash", "prev_hash", "reason", "server", "session", "tool", "ts",
)  # fmt: skip
_TEMPLATE = "{" + ",".join(f'"{name}":%s' for name in HASHED_COLUMNS) + "}"
_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode

# SQL is only ever built from these constants; every value is a bound parameter.
_SPLIT = HASHED_COLUMNS.index("duration_ms")  # the one REAL column: SQLite prints floats differently
_OBJECTS = [
    ", ".join(f"'{n}', {n}" for n in names)
    for names in (HASHED_COLUMNS[:_SPLIT], HASHED_COLUMNS[_SPLIT + 1 :])
]
_SELECT_CHAIN = (
    f"SELECT id, entry_hash, prev_hash, json_object({_OBJECTS[0]}), duration_ms, json_object({_OBJECTS[1]}) "  # noqa: S608
    "FROM entries WHERE id > ? ORDER BY id"
)

# Created by the ledger's migration and checked by verify: one text for both, kept here so that
# ledger_chain need not import ledger.
TRIGGERS = {
    f"entries_no_{verb.lower()}": f"CREATE TRIGGER entries_no_{verb.lower()} BEFORE {verb} ON entries "
    "BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END"
    for verb in ("UPDATE", "DELETE")
}


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    entries: int  # entries checked and found good: all of them when ok
    first_bad: int | None  # id of the first entry that does not match, when one does
    problem: str  # "" when ok
    head: str  # entry_hash of the last good entry: anchor it elsewhere to detect a rewrite


def entry_hash(values: Sequence[object]) -> str:
    """SHA-256 of HASH_DOMAIN + the canonical JSON of `values`, given in HASHED_COLUMNS order.

    Equals json.dumps(dict(zip(HASHED_COLUMNS, values)), sort_keys=True, separators=(",", ":"),
    ensure_ascii=False) for the str, float and None the columns hold, built without the dict.
    """
    text = _TEMPLATE % tuple(
        [
            encode_basestring(v)
            if v.__class__ is str
            else "null"
            if v is None
            else float.__repr__(v)  # what json writes for a finite float
            if v.__class__ is float and math.isfinite(v)
            else _JSON(v)
            for v in values
        ]
    )
    return hashlib.sha256(HASH_DOMAIN + text.encode("utf-8")).hexdigest()


def _verify(conn: sqlite3.Connection) -> VerifyResult:
    schema = {name: sql for kind, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master")}
    if "entries" not in schema:
        return VerifyResult(False, 0, None, "there is no entries table", ZERO_HASH)
    damage = []
    for name, sql in TRIGGERS.items():
        if name not in schema:
            damage.append(f"trigger {name!r} is missing, so entries could be edited")
        elif " ".join(str(schema[name]).split()) != sql:
            damage.append(f"trigger {name!r} was altered")
    count, last_id, head, first_bad, problem = _walk_chain(conn)
    if first_bad is None:
        # The chain cannot see a cut-off tail; AUTOINCREMENT remembers the highest id ever used.
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
        if row is not None and int(row[0]) > last_id:
            first_bad = last_id + 1
            problem = f"entries {last_id + 1}..{row[0]} are missing (the end of the ledger was cut off)"
    problems = [f"entry {first_bad}: {problem}"] if first_bad is not None else []
    problems += damage
    return VerifyResult(not problems, count, first_bad, "; ".join(problems), head)


def _walk_chain(conn: sqlite3.Connection) -> tuple[int, int, str, int | None, str]:
    """(good entries, last good id, head hash, first bad id, problem); streams rows in id order.

    For speed SQLite builds the canonical JSON (its json_object escapes text exactly as Python's json
    does) but for duration_ms, whose float Python prints. A row whose hash does not match is rebuilt
    the defining way, by `entry_hash`, before it is called bad.
    """
    try:
        conn.execute("SELECT json_object()")
    except sqlite3.OperationalError:  # SQLite built without JSON: the same text, built in Python
        conn.create_function("json_object", -1, _json_object, deterministic=True)
    sha256, domain, dumps = hashlib.sha256, HASH_DOMAIN, _JSON
    count, last_id, head = 0, 0, ZERO_HASH
    cur: sqlite3.Cursor | None = conn.execute(_SELECT_CHAIN, (last_id,))
    while True:
        try:
            if cur is not None:
                rows = cur.fetchmany(4096)
            else:
                rows = conn.execute(_SELECT_CHAIN + " LIMIT 1", (last_id,)).fetchall()
        except sqlite3.Error as exc:  # text that is not UTF-8, a blob: written by hand
            if cur is not None:  # go on one row a query, to check the rows before it and to name it
                cur = None
                continue
            bad = conn.execute("SELECT min(id) FROM entries WHERE id > ?", (last_id,)).fetchone()[0]
            return count, last_id, head, bad, f"cannot be read ({exc})"
        if not rows:
            return count, last_id, head, None, ""
        for entry_id, stored, prev, before, duration, after in rows:  # the hot loop: keep it lean
            if prev != head:
                return count, last_id, head, entry_id, _chain_break(last_id, entry_id)
            try:
                number = "null" if duration is None else dumps(duration)
            except (TypeError, ValueError):
                return count, last_id, head, entry_id, "holds a value that is not text or a number"
            text = f'{before[:-1]},"duration_ms":{number},{after[1:]}'
            if (
                sha256(domain + text.encode("utf-8")).hexdigest() != stored
                and _row_hash(conn, entry_id) != stored
            ):
                problem = "content does not match its entry_hash (edited, or written by hand)"
                return count, last_id, head, entry_id, problem
            count, last_id, head = count + 1, entry_id, stored


def _row_hash(conn: sqlite3.Connection, entry_id: int) -> str:
    sql = f"SELECT {', '.join(HASHED_COLUMNS)} FROM entries WHERE id = ?"  # noqa: S608
    try:
        return entry_hash(conn.execute(sql, (entry_id,)).fetchone())
    except (TypeError, ValueError):
        return ""  # a value JSON cannot hold: no hash matches it


def _json_object(*pairs: object) -> str:
    return _JSON(dict(zip(pairs[::2], pairs[1::2], strict=True)))


def _chain_break(last_id: int, bad_id: int) -> str:
    if last_id + 1 < bad_id:
        missing = f"{last_id + 1}" if last_id + 2 == bad_id else f"{last_id + 1}..{bad_id - 1}"
        return f"prev_hash does not match; entries {missing} before it are missing (deleted)"
    if last_id == 0:
        return "prev_hash is not the zero hash of a first entry (entries before it deleted or moved)"
    return f"prev_hash does not match entry {last_id} (entries were inserted, deleted or reordered)"
