"""The ledger's hash chain: the canonical hash of an entry, what verify reports, and how it words
a break in the chain. Stdlib only: imports nothing from mcp_guard (the stores import this) and no
database driver (each store walks its own rows)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring

ZERO_HASH = "0" * 64
# Domain separation: an entry hash never equals a hash of the same JSON made for another purpose.
HASH_DOMAIN = b"mcp-guard ledger entry v1\x00"
HASH_DOMAIN_V2 = b"mcp-guard ledger entry v2\x00"
"""Hash v2: the row has a `method` (decisions from schema 2 on), and it is hashed with it."""
HASH_DOMAIN_V3 = b"mcp-guard ledger entry v3\x00"
"""Hash v3: the row names the `credential` that made the call (decisions from schema 4 on)."""
HASH_DOMAIN_V4 = b"mcp-guard ledger entry v4\x00"
"""Hash v4: the row keeps the `name` the client called (decisions from schema 6 on)."""

# Every stored column but id, entry_hash and the optional ones, sorted: the keys of hash v1.
HASHED_COLUMNS = (
    "agent", "arguments", "call_id", "decision", "detail", "duration_ms", "kind", "outcome",
    "payload", "policy_hash", "prev_hash", "reason", "server", "session", "tool", "ts",
)  # fmt: skip
OPTIONAL = ("credential", "method", "name")
"""Columns added later, hashed only where they are not null: a row written before one existed
verifies as it did, and nulling or setting one changes the domain as well as the text."""
COLUMNS = tuple(sorted((*HASHED_COLUMNS, *OPTIONAL)))
"""Every stored column but id and entry_hash, sorted: the order in which `entry_hash` takes a
row's values. The keys hashed are these less the optional columns that are null; the domain is
that of the latest column set: none of them v1, a method v2, a credential v3, a name v4."""
METHOD, CREDENTIAL, NAME = COLUMNS.index("method"), COLUMNS.index("credential"), COLUMNS.index("name")
_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _template(method: bool, credential: bool, name: bool) -> tuple[str, list[int], bytes]:
    dropped = {n for n, kept in (("method", method), ("credential", credential), ("name", name)) if not kept}
    keep = [i for i, column in enumerate(COLUMNS) if column not in dropped]
    text = "{" + ",".join(f'"{COLUMNS[i]}":%s' for i in keep) + "}"
    domain = (
        HASH_DOMAIN_V4
        if name
        else HASH_DOMAIN_V3
        if credential
        else HASH_DOMAIN_V2
        if method
        else HASH_DOMAIN
    )
    return text, keep, domain


_TEMPLATES = {
    (m, c, n): _template(m, c, n) for m in (False, True) for c in (False, True) for n in (False, True)
}
_TEMPLATE_V1 = "{" + ",".join(f'"{name}":%s' for name in HASHED_COLUMNS) + "}"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    entries: int  # entries checked and found good: all of them when ok
    first_bad: int | None  # id of the first entry that does not match, when one does
    problem: str  # "" when ok
    head: str  # entry_hash of the last good entry: anchor it elsewhere to detect a rewrite


@dataclass(frozen=True, slots=True)
class Anchor:
    """Where a ledger stood: what a signed checkpoint records, and where `verify` can start again.
    `ledger` is the ledger's id, the entry_hash of its first entry: fixed once that entry is
    written, and different for every ledger (it covers the first entry's time and content)."""

    ledger: str
    entry_id: int
    entry_hash: str
    entries: int  # how many entries have an id <= entry_id


def entry_hash(values: Sequence[object]) -> str:
    """SHA-256 of the domain + the canonical JSON of a row's `values`, given in COLUMNS order (or,
    for a row written before the optional columns, in HASHED_COLUMNS order).

    Equals json.dumps(dict(zip(names, values)), sort_keys=True, separators=(",", ":"),
    ensure_ascii=False) for the str, float and None the columns hold, built without the dict;
    `names` leaves out the optional columns that are null.
    """
    if len(values) == len(HASHED_COLUMNS):
        template, domain = _TEMPLATE_V1, HASH_DOMAIN
    else:
        template, keep, domain = _TEMPLATES[
            values[METHOD] is not None, values[CREDENTIAL] is not None, values[NAME] is not None
        ]
        values = [values[i] for i in keep]
    text = template % tuple(
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
    return hashlib.sha256(domain + text.encode("utf-8")).hexdigest()


def chain_break(last_id: int, bad_id: int) -> str:
    """What verify says of an entry whose prev_hash is not the hash of the good entry before it."""
    if last_id + 1 < bad_id:
        missing = f"{last_id + 1}" if last_id + 2 == bad_id else f"{last_id + 1}..{bad_id - 1}"
        return f"prev_hash does not match; entries {missing} before it are missing (deleted)"
    if last_id == 0:
        return "prev_hash is not the zero hash of a first entry (entries before it deleted or moved)"
    return f"prev_hash does not match entry {last_id} (entries were inserted, deleted or reordered)"
