"""Ledger entries as rows: a call's decision, its outcome and the policy, pin and approval events,
each checked and turned into the columns the ledger stores (and hashes), and redacted. Bounds what
a refused call can make large, so no agent can fill the disk. Pure; imports nothing from mcp_guard
but ledger.chain's canonical JSON and policy.targets (the method a target is acted on by)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from mcp_guard.ledger.chain import _JSON
from mcp_guard.policy.targets import METHODS

EVENT_KINDS = frozenset(
    {"policy", "pin", "approval", "activation", "lockout", "unlock", "mark", "revocation"}
    | {"elicitation", "sampling"}
)
DECISIONS = frozenset({"allow", "deny"})
OUTCOMES = frozenset({"ok", "error", "upstream_error", "timeout", "cancelled"})
TEXT_COLUMNS = ("session", "detail")
JSON_COLUMNS = ("arguments", "payload")


class Redactor(Protocol):
    """What redacts a row (the guard's Scrubber): secrets and credential-looking values."""

    def flags(self, value: str) -> bool: ...

    def record(self, value: str) -> str: ...

    def json(self, value: Any, *, record: bool = False) -> Any: ...


MAX_REFUSED_ARGUMENT_BYTES = 8 * 1024
"""A refused call's arguments larger than this (canonical JSON, UTF-8) are recorded as TRUNCATED."""
PREVIEW_CHARS = 512
TRUNCATED = "$truncated"
"""The one key of what is recorded instead: {"$truncated": {"sha256", "bytes", "preview"}}."""
MAX_DETAIL_CHARS = 1024
"""A recorded detail is cut to this many characters (it can quote what an agent sent)."""


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One decision about one request, as the request path hands it to the ledger."""

    call_id: str  # uuid4 hex, minted by the caller
    agent: str
    session: str | None
    server: str | None  # None when the name resolved to no tool
    tool: str  # upstream tool name, or the name as sent (escaped, at most 256 characters)
    arguments: object  # JSON value, already redacted
    decision: str  # "allow" | "deny"
    reason: str | None  # denial code, e.g. "limit_exceeded"
    detail: str | None
    policy_hash: str  # sha256 hex of the policy in force
    method: str = METHODS["tool"]  # the MCP method: its Target's (tools/call for a tool)
    # Which credential made the call: `stdio`, `key:<12 hex of its hash>`, `token:<jti>` or
    # `oauth:<subject>:<jti>`; never the credential itself.
    credential: str | None = None
    name: str | None = None  # the name the client called (escaped, at most 256 characters)


def format_ts(ts: datetime) -> str:
    """UTC ISO-8601 with microseconds and Z; fixed width, so text order is time order."""
    if ts.tzinfo is None:
        msg = f"timestamp {ts!r} has no time zone"
        raise ValueError(msg)
    if ts.tzinfo is not UTC:
        ts = ts.astimezone(UTC)
    return ts.isoformat(timespec="microseconds")[:-6] + "Z"  # "+00:00" becomes "Z"


def canonical_json(value: object) -> str:
    """Sorted keys, no whitespace, UTF-8; ValueError for NaN, infinities and values that are not JSON."""
    try:
        return _text(_JSON(value))
    except (TypeError, ValueError) as exc:
        msg = f"value is not JSON: {exc}"
        raise ValueError(msg) from exc


def sensitive(value: object) -> str:
    """What the ledger records for a sensitive argument's value: its SHA-256 (of canonical JSON),
    marked so every view shows it for what it is. Equal values record equal digests, so budgets,
    `unique` and `requires` still compare them; a value of few possibilities can be guessed back
    from its digest."""
    try:
        text = canonical_json(value)
    except ValueError:
        text = repr(value)
    return f"[sensitive sha256:{hashlib.sha256(text.encode('utf-8', 'backslashreplace')).hexdigest()}]"


def _text(value: str) -> str:
    # SQLite text is UTF-8: a lone surrogate cannot be stored, so it is kept as a visible escape.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _opt_text(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _one_of(value: str, allowed: frozenset[str], what: str) -> str:
    if value not in allowed:
        msg = f"{what} must be one of {sorted(allowed)}, not {value!r}"
        raise ValueError(msg)
    return value


def recorded_arguments(arguments: object, decision: str) -> str:
    """The arguments column. Allowed calls keep their whole arguments (budgets and approvals read
    them; `limits.max_argument_bytes` bounds them). A refused call's arguments over
    MAX_REFUSED_ARGUMENT_BYTES become their SHA-256, size and a preview; so do refused arguments
    that carry the TRUNCATED key themselves, so that form can never be forged by an agent."""
    text = canonical_json(arguments)
    if decision == "allow":
        return text
    data = text.encode("utf-8")
    forged = isinstance(arguments, dict) and TRUNCATED in arguments
    if len(data) <= MAX_REFUSED_ARGUMENT_BYTES and not forged:
        return text
    summary: dict[str, object] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    summary["preview"] = text[:PREVIEW_CHARS]
    return canonical_json({TRUNCATED: summary})


def _bounded(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > MAX_DETAIL_CHARS:
        value = value[: MAX_DETAIL_CHARS - 1] + "…"
    return _text(value)


def decision_fields(rec: CallRecord) -> dict[str, object]:
    return {
        "kind": "decision",
        "method": _text(rec.method),
        "call_id": _text(rec.call_id),
        "agent": _text(rec.agent),
        "session": _opt_text(rec.session),
        "server": _opt_text(rec.server),
        "tool": _text(rec.tool),
        "arguments": recorded_arguments(rec.arguments, _one_of(rec.decision, DECISIONS, "decision")),
        "decision": rec.decision,
        "reason": _opt_text(rec.reason),
        "detail": _bounded(rec.detail),
        "policy_hash": _text(rec.policy_hash),
        "credential": _bounded(rec.credential),
        "name": _opt_text(rec.name),
    }


def event_fields(
    kind: str, payload: dict[str, Any], policy_hash: str | None, **columns: str | None
) -> dict[str, object]:
    if not isinstance(payload, dict):
        msg = f"payload must be a dict, not {type(payload).__name__}"
        raise ValueError(msg)
    fields: dict[str, object] = {
        "kind": _one_of(kind, EVENT_KINDS, "event kind"),
        "payload": canonical_json(payload),
        "policy_hash": _opt_text(policy_hash),
    }
    for name in ("call_id", "agent", "session", "server", "tool"):
        fields[name] = _opt_text(columns.get(name))
    return fields


def outcome_fields(call_id: str, outcome: str, duration_ms: float, detail: str | None) -> dict[str, object]:
    if not math.isfinite(duration := float(duration_ms)) or duration < 0:
        msg = f"duration_ms must be a finite number >= 0, not {duration_ms!r}"
        raise ValueError(msg)
    duration += 0.0  # -0.0 would come back from SQLite as 0.0 and no longer match its hash
    return {
        "kind": "outcome",
        "call_id": _text(call_id),
        "outcome": _one_of(outcome, OUTCOMES, "outcome"),
        "duration_ms": duration,
        "detail": _bounded(detail),
    }


def redact(fields: Mapping[str, object], redactor: Redactor) -> Mapping[str, object]:
    """A row with every column that can carry an agent's or an upstream's text redacted: session,
    detail, arguments, payload, and tool when the name resolved to no tool (server null). The
    agent, the server and a resolved tool are names guard.yaml and the manifests define (a name
    holding a secret is never offered), and budgets and approvals count by them. One search over
    those columns decides; the common case, nothing to redact, returns the row as it is."""
    names = [*TEXT_COLUMNS, *JSON_COLUMNS]
    if fields.get("server") is None:
        names.append("tool")
    values = {name: value for name in names if isinstance(value := fields.get(name), str)}
    if not values or not redactor.flags("\x00".join(values.values())):
        return fields
    out = dict(fields)
    for name, value in values.items():
        if name in JSON_COLUMNS:
            out[name] = canonical_json(redactor.json(json.loads(value), record=True))
        else:
            out[name] = redactor.record(value)
    return out
