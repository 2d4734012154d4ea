"""What the ledger settles for a call: the checks that run inside the transaction that records a
decision (lockout, prerequisites, flow marks, budgets, duplicates, approval, activation), so
concurrent calls from any number of guard processes can never overspend a budget, use one approval
twice, let a duplicate through or miss a lockout. Reads the ledger only through its Window and
decides nothing the policy core does not."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from mcp_guard.config import LockoutConfig
from mcp_guard.ledger.base import ApprovalEvent, LockoutEvent, MarkEvent, Window
from mcp_guard.ledger.entries import CallRecord, format_ts
from mcp_guard.manifest import Approval, BlockedAfter
from mcp_guard.policy import approvals, budgets, flows
from mcp_guard.policy.arguments import Violation
from mcp_guard.policy.budgets import Charge, Once
from mcp_guard.policy.durations import format_duration
from mcp_guard.policy.flows import Prerequisite
from mcp_guard.policy.reasons import NOT_COUNTED, Reason


class Stale(Exception):
    """The call was decided under an activation that is no longer in force: decide it again."""


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
    session: str | None = None
    requires: tuple[Prerequisite, ...] = ()  # scoped, from the arguments as recorded
    blocked: BlockedAfter | None = None
    marks: tuple[str, ...] = ()
    activated: bool = False
    prefixes: Mapping[str, str] = field(default_factory=dict)  # advertised-name prefix by server


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


def request(
    window: Window, hold: Hold, policy_hash: str, lockout: LockoutConfig | None = None
) -> tuple[str | None, str]:
    """`file_request`, unless the call is refused whatever an operator would say (its agent is
    locked out, or `refused_before_approval`): then no one is asked, and the verdict is "refused"
    (the decision's own transaction says why)."""
    if lockout is not None and window.lockouts(agent=hold.agent):
        return None, "refused"
    if refused_before_approval(window, hold) is not None:
        return None, "refused"
    return file_request(window, hold, policy_hash)


def approval_verdict(window: Window, hold: Hold) -> str:
    return approvals.verdict(
        approvals.latest(_approval_events(window, hold), hold.digest), format_ts(window.now)
    )


def check(
    window: Window, record: CallRecord, hold: Hold | None = None, lockout: LockoutConfig | None = None
) -> CallRecord:
    """The record to commit for any decision: refused locked_out while its agent is locked out;
    an allowed call settled against its hold; and a refusal that makes `lockout.denials` within
    `lockout.within` locks the agent out (a `lockout` entry after it, in the same transaction)."""
    if lockout is not None:
        locked = window.lockouts(agent=record.agent)
        if locked:
            detail = f"this agent is locked out after repeated refusals until {locked[0].until}"
            return _deny(record, Reason.LOCKED_OUT, detail)
    if hold is not None and record.decision == "allow":
        record = settle(window, record, hold)
    if lockout is not None and _locks_out(window, record, lockout):
        until = format_ts(window.now + timedelta(seconds=lockout.for_))
        payload = {"until": until, "denials": lockout.denials, "within": format_duration(lockout.within)}
        window.append(LockoutEvent(payload=payload, agent=record.agent, policy_hash=record.policy_hash))
    return record


def _locks_out(window: Window, record: CallRecord, lockout: LockoutConfig) -> bool:
    """Whether this refusal is the one that reaches `lockout.denials` within `lockout.within`."""
    if record.decision != "deny" or record.reason in NOT_COUNTED:
        return False
    return window.denials(record.agent, lockout.within) + 1 >= lockout.denials


def settle(window: Window, record: CallRecord, hold: Hold) -> CallRecord:
    """The allowed record, or a denial that says what would pass. What no operator can overrule
    first (prerequisites, marks, budgets, duplicates), then approval (SPEC.md's order): a call
    refused before never reaches an operator. An allowed call puts its grant's marks on its
    session. Raises Stale for a call decided under an activation no longer in force."""
    if hold.activated and not any(
        (e.server, e.tool) == (hold.server, hold.tool) for e in window.activations(agent=hold.agent)
    ):
        raise Stale
    record = _settled(window, record, hold)
    if hold.marks and record.decision == "allow":
        event = MarkEvent(
            payload={"marks": list(hold.marks)},
            agent=hold.agent,
            session=hold.session,
            server=hold.server,
            tool=hold.tool,
            call_id=record.call_id,
            policy_hash=record.policy_hash,
        )
        window.append(event)
    return record


def _settled(window: Window, record: CallRecord, hold: Hold) -> CallRecord:
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
    """What refuses a call whatever an operator would say: a call that must come first and did
    not, a mark that blocks it, an overspent budget, then a repeat of an allowed call that its
    grant's `unique` forbids. Such a call never reaches an operator."""
    for pre in hold.requires:
        if window.earlier(pre.server, pre.tool, pre.within, pre.scope, ok=True) is None:
            return pre.missing()
    if hold.blocked is not None:
        violation = flows.blocked(
            hold.blocked, carried(window, hold.agent, hold.session, hold.blocked.within, hold.prefixes)
        )
        if violation is not None:
            return violation
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


def carried(
    window: Window,
    agent: str,
    session: str | None,
    seconds: float,
    prefixes: Mapping[str, str],
    *,
    any_session: bool = False,
) -> list[flows.Marked]:
    """The marks a session (or `any_session` of the agent) carries from within `seconds`, newest
    first, each mark once."""
    out: dict[str, flows.Marked] = {}
    for event in window.marks(agent, session, seconds, any_session=any_session):
        until = format_ts(datetime.fromisoformat(event.ts or "") + timedelta(seconds=seconds))
        name = prefixes.get(event.server or "", f"{event.server}__") + (event.tool or "")
        for mark in event.marks:
            out.setdefault(mark, flows.Marked(mark, name, event.ts or "", until))
    return list(out.values())


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
