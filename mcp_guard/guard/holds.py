"""Budgets and approvals against the ledger: the checks that run inside the transaction that
records a decision, so concurrent calls from any number of guard processes can never overspend a
budget or use one approval twice. Converts ledger rows to policy values and back; decides nothing
the policy core does not."""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

from mcp_guard.ledger.sqlite.store import CallRecord, Window, format_ts
from mcp_guard.manifest import Approval
from mcp_guard.policy import approvals, budgets
from mcp_guard.policy.arguments import Violation
from mcp_guard.policy.budgets import Charge
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
    window.queue_event(
        "approval", payload, agent=hold.agent, server=hold.server, tool=hold.tool, policy_hash=policy_hash
    )
    return request_id, "pending"


def approval_verdict(window: Window, hold: Hold) -> str:
    return approvals.verdict(
        approvals.latest(_approval_events(window, hold), hold.digest), format_ts(window.now)
    )


def check(window: Window, record: CallRecord, hold: Hold, tallies: Tallies) -> CallRecord:
    """The record to commit: the allowed record, or a denial that says what would pass.
    Budgets first, then approval (SPEC.md's order): a call the budget refuses never reaches
    an operator."""
    violation = over_budget(window, hold, tallies)
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
        detail = f"held for human approval as request {request_id}; call again with the same arguments"
        return _deny(record, Reason.APPROVAL_PENDING, f"{detail} once it is approved")
    _queue(window, hold, request_id, approvals.USE, record.policy_hash, call_id=record.call_id)
    return record


def over_budget(window: Window, hold: Hold, tallies: Tallies) -> Violation | None:
    """The first budget this call would overspend, if any."""
    return budgets.check_budgets(hold.tool, [(c, tallies.spent(window, hold, c)) for c in hold.charges])


def remaining(window: Window, hold: Hold, tallies: Tallies) -> list[tuple[Charge, Decimal]]:
    """What is left of each budget for this call (for `tools` and `explain`)."""
    return [(c, max(c.budget.max - tallies.spent(window, hold, c), Decimal(0))) for c in hold.charges]


_ZERO, _ONE = Decimal(0), Decimal(1)


class Tallies:
    """Running budget totals of one guard process, caught up from the ledger inside each
    decision's transaction (the rows any process appended since the last look), so a check
    costs O(new rows), not O(window). Totals are exact decimals; the window rolls by expiring
    the oldest rows. Only used under the ledger's write lock, so never by two threads at once."""

    def __init__(self) -> None:
        # (server, tool, by, sum, per) -> the last entry id read, and one tally per scope value
        self._lines: dict[tuple[Any, ...], tuple[int, dict[tuple[tuple[str, str], ...], _Tally]]] = {}

    def spent(self, window: Window, hold: Hold, charge: Charge) -> Decimal:
        budget = charge.budget
        by, sum_of = budget.by, budget.sum
        key = (hold.server, hold.tool, by, sum_of, budget.per)
        line = self._lines.get(key)
        if line is not None:
            seen, tallies = line
            rows = window.allowed(hold.server, hold.tool, after_id=seen)
        else:
            # First look at this budget: read its whole window once.
            seen, tallies = window.last_id(), {}
            rows = window.allowed(hold.server, hold.tool, seconds=budget.per)
        for _, ts, agent, session, arguments in rows:
            args = arguments if type(arguments) is dict else {}
            scope = tuple([(k, budgets.scope_value(k, agent, session, args)) for k in by])
            amount = _ONE if sum_of is None else budgets.amount_of(args.get(sum_of))
            tally = tallies.get(scope)
            if tally is None:
                tally = tallies[scope] = _Tally()
            tally.add(ts, amount or _ZERO)
        if rows:
            seen = max(seen, rows[-1][0])  # in id order
        self._lines[key] = (seen, tallies)
        tally = tallies.get(charge.scope)
        return tally.total_since(window.since(budget.per)) if tally else _ZERO


class _Tally:
    def __init__(self) -> None:
        self.rows: deque[tuple[str, Decimal]] = deque()
        self.total = Decimal(0)

    def add(self, ts: str, amount: Decimal) -> None:
        self.rows.append((ts, amount))
        try:
            self.total = budgets.EXACT.add(self.total, amount)
        except ArithmeticError:  # a history too precise to sum exactly counts as spent in full
            self.total = Decimal("Infinity")

    def total_since(self, since: str) -> Decimal:
        while self.rows and self.rows[0][0] <= since:
            _, amount = self.rows.popleft()
            if self.total.is_finite():
                self.total = budgets.EXACT.subtract(self.total, amount)
        return self.total


def _approval_events(window: Window, hold: Hold) -> list[Mapping[str, Any]]:
    events = window.events("approval", server=hold.server, tool=hold.tool, agent=hold.agent)
    return [e.payload for e in events if isinstance(e.payload, Mapping)]


def _queue(
    window: Window, hold: Hold, request_id: str, action: str, policy_hash: str, call_id: str | None = None
) -> None:
    payload = {"id": request_id, "action": action}
    window.queue_event(
        "approval",
        payload,
        agent=hold.agent,
        server=hold.server,
        tool=hold.tool,
        call_id=call_id,
        policy_hash=policy_hash,
    )


def _deny(record: CallRecord, reason: str, detail: str) -> CallRecord:
    return replace(record, decision="deny", reason=reason, detail=detail)
