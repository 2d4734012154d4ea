"""Approvals as values: whether a call needs one, the exact-arguments digest it is bound to, and
the state of its latest request folded from the ledger's approval events. Pure."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp_guard.manifest import Approval
from mcp_guard.policy.arguments import Compiled, check_schema, compile_schema
from mcp_guard.policy.reasons import Reason

# Actions recorded as approval events, in their payload's "action".
REQUEST, APPROVE, DENY, USE, EXPIRED = "request", "approve", "deny", "use", "expired"


def digest(arguments: Mapping[str, Any]) -> str:
    """SHA-256 of the exact canonical arguments: an approval covers these bytes and no others."""
    text = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def needs_approval(
    approval: Approval | None, arguments: Mapping[str, Any], validator: Compiled | None = None
) -> bool:
    """`when` omitted: every call. Otherwise each listed argument is absent or valid against its
    schema (`validator`: `when` compiled as the properties of an object, if already at hand)."""
    if approval is None:
        return False
    if approval.when is None:
        return True
    if validator is None:
        validator = compile_schema({"type": "object", "properties": dict(approval.when)})
    return not check_schema(validator, arguments, Reason.INVALID_ARGUMENTS)  # only: does it match


@dataclass(frozen=True, slots=True)
class Request:
    """The latest approval request for one agent, tool and argument digest."""

    id: str
    requested_at: str
    expires_at: str
    status: str  # pending | approved | denied | used
    notified_expired: bool = False
    decided_by: str | None = None

    def lapsed(self, now: str) -> bool:
        return now >= self.expires_at


def latest(events: Iterable[Mapping[str, Any]], arguments_digest: str) -> Request | None:
    """Fold the approval events of one agent and tool (oldest first) for one digest."""
    found: Request | None = None
    for e in events:
        action = e.get("action")
        if action == REQUEST and e.get("digest") == arguments_digest:
            found = Request(str(e["id"]), str(e["requested_at"]), str(e["expires_at"]), "pending")
        elif found is not None and e.get("id") == found.id:
            found = _apply(found, e)
    return found


def _apply(req: Request, event: Mapping[str, Any]) -> Request:
    action = event.get("action")
    if action == APPROVE and req.status == "pending":
        return Request(req.id, req.requested_at, req.expires_at, "approved", decided_by=event.get("by"))
    if action == DENY and req.status == "pending":
        return Request(req.id, req.requested_at, req.expires_at, "denied", decided_by=event.get("by"))
    if action == USE and req.status == "approved":
        return Request(req.id, req.requested_at, req.expires_at, "used", decided_by=req.decided_by)
    if action == EXPIRED:
        return Request(req.id, req.requested_at, req.expires_at, req.status, True, req.decided_by)
    return req


def verdict(req: Request | None, now: str) -> str:
    """What the latest request means for a call now: `use` (forward it, once), `denied`,
    `pending` (hold it), `expired` (say so once), or `new` (file a new request)."""
    if req is None or req.status == "used":
        return "new"
    if req.lapsed(now):
        if req.status == "denied" or req.notified_expired:
            return "new"
        return "expired"
    return {"approved": "use", "denied": "denied", "pending": "pending"}[req.status]


def pending(events: Iterable[Mapping[str, Any]], now: str) -> dict[str, Mapping[str, Any]]:
    """Requests still waiting for an operator, by id, from every approval event (oldest first)."""
    requests: dict[str, Mapping[str, Any]] = {}
    for e in events:
        if e.get("action") == REQUEST:
            requests[str(e["id"])] = e
        elif e.get("action") in (APPROVE, DENY, EXPIRED):
            requests.pop(str(e.get("id")), None)
    return {i: e for i, e in requests.items() if now < str(e["expires_at"])}
