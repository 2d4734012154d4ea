"""Budgets and approvals against the ledger: the checks that run inside the transaction that
records a decision, so concurrent calls from any number of guard processes can never overspend a
budget or use one approval twice. Reads the ledger only through its Window (spend, approval
events) and decides nothing the policy core does not."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

from mcp_guard.ledger.base import ApprovalEvent, Window
from mcp_guard.ledger.entries import CallRecord, format_ts
from mcp_guard.manifest import Approval
from mcp_guard.policy import approvals, budgets
from mcp_guard.policy.arguments import Violation
from mcp_guard.policy.budgets import Charge, Once
from mcp_guard.policy.durations import format_duration
from mcp_guard.policy.reasons import Reason


@dataclass(frozen=True, slots=True)
class Hold:
    """What must hold, in the ledger, for one allowed call to go ahead."""

    server: str
    tool: str
    agent: str
    charges: tuple[Charge, ...] = ()
    approval: Approval | None = None
    digest: str = ""
    recorded_arguments: Any = None  # redacted, for the approval request
    once: Once | None = None  # a `unique` grant's scope, read from the arguments as recorded


def file_request(window: Window, hold: Hold, policy_hash: str) -> tuple[str, str]:
    """The latest request for this exact call and what it means now; files a new request (or
    reuses a pending one) when needed. Returns (request id, verdict)."""
    assert hold.approval is not None
    now = format_ts(window.now)
    req = approvals.latest(_approval_events(window, hold), hold.digest)
    verdict = approvals.verdict(req, now)
    if verdict != "new":
        assert req is not None
        return req.id, verdict
    request_id = uuid.uuid4().hex[:16]
    payload = {
        "id": request_id,
        "action": approvals.REQUEST,
        "digest": hold.digest,
        "arguments": hold.recorded_arguments,
        "requested_at": now,
        "expires_at": format_ts(window.now + timedelta(seconds=hold.approval.timeout)),
    }
    window.append(
        ApprovalEvent(
            payload=payload, agent=hold.agent, server=hold.server, tool=hold.tool, policy_hash=policy_hash
        )
    )
    return request_id, "pending"


def approval_verdict(window: Window, hold: Hold) -> str:
    return approvals.verdict(
        approvals.latest(_approval_events(window, hold), hold.digest), format_ts(window.now)
    )


def check(window: Window, record: CallRecord, hold: Hold) -> CallRecord:
    """The record to commit: the allowed record, or a denial that says what would pass.
    Budgets first, then approval (SPEC.md's order): a call the budget refuses never reaches
    an operator."""
    violation = refused_before_approval(window, hold)
    if violation is not None:
        return _deny(record, violation.reason, violation.detail)
    if hold.approval is None:
        return record
    request_id, verdict = file_request(window, hold, record.policy_hash)
    if verdict == "denied":
        return _deny(record, Reason.APPROVAL_DENIED, f"an operator denied this call (approval {request_id})")
    if verdict == "expired":
        _queue(window, hold, request_id, approvals.EXPIRED, record.policy_hash)
        return _deny(
            record, Reason.APPROVAL_EXPIRED, f"approval {request_id} lapsed; call again to request a new one"
        )
    if verdict == "pending":
        return _deny(record, Reason.APPROVAL_PENDING, pending_detail(request_id))
    _queue(window, hold, request_id, approvals.USE, record.policy_hash, call_id=record.call_id)
    return record


def pending_detail(request_id: str | None) -> str:
    """What a held call says; `explain` files no request, so it has no id to name."""
    held = "held for human approval" + (f" as request {request_id}" if request_id else "")
    return f"{held}; call again with the same arguments once it is approved"


def refused_before_approval(window: Window, hold: Hold) -> Violation | None:
    """What refuses a call whatever an operator would say: an overspent budget, then a repeat of
    an allowed call that its grant's `unique` forbids. Such a call never reaches an operator."""
    violation = over_budget(window, hold)
    if violation is not None or hold.once is None:
        return violation
    earlier = window.earlier(hold.server, hold.tool, hold.once.per, hold.once.scope)
    if earlier is None:
        return None
    call_id, ts = earlier
    detail = (
        f"an identical call was already allowed at {ts} (call {call_id}) within "
        f"{format_duration(hold.once.per)}; it may have taken effect"
    )
    return Violation(Reason.DUPLICATE_CALL, detail)


def over_budget(window: Window, hold: Hold) -> Violation | None:
    """The first budget this call would overspend, if any."""
    return budgets.check_budgets(hold.tool, [(c, _spent(window, hold, c)) for c in hold.charges])


def remaining(window: Window, hold: Hold) -> list[tuple[Charge, Decimal]]:
    """What is left of each budget for this call (for `tools` and `explain`)."""
    return [(c, max(c.budget.max - _spent(window, hold, c), Decimal(0))) for c in hold.charges]


def _spent(window: Window, hold: Hold, charge: Charge) -> Decimal:
    return window.spent(hold.server, hold.tool, charge.budget, charge.scope)


def _approval_events(window: Window, hold: Hold) -> list[Mapping[str, Any]]:
    return [e.payload for e in window.approvals(server=hold.server, tool=hold.tool, agent=hold.agent)]


def _queue(
    window: Window, hold: Hold, request_id: str, action: str, policy_hash: str, call_id: str | None = None
) -> None:
    payload = {"id": request_id, "action": action}
    window.append(
        ApprovalEvent(
            payload=payload,
            agent=hold.agent,
            server=hold.server,
            tool=hold.tool,
            call_id=call_id,
            policy_hash=policy_hash,
        )
    )


def _deny(record: CallRecord, reason: str, detail: str) -> CallRecord:
    return replace(record, decision="deny", reason=reason, detail=detail)
