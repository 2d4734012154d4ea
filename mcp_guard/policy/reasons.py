"""The stable reason codes of a refusal: what the ledger records, the CLI filters by, tests assert
and the model reads in `denied (<reason>): ...`. One enum, so a code is never misspelt. Pure."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    UNKNOWN_TOOL = "unknown_tool"
    INVALID_ARGUMENTS = "invalid_arguments"
    LIMIT_EXCEEDED = "limit_exceeded"
    BUDGET_EXHAUSTED = "budget_exhausted"
    APPROVAL_PENDING = "approval_pending"
    APPROVAL_DENIED = "approval_denied"
    APPROVAL_EXPIRED = "approval_expired"
    PIN_MISMATCH = "pin_mismatch"
    LEDGER_UNAVAILABLE = "ledger_unavailable"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    PREREQUISITE_MISSING = "prerequisite_missing"
    DUPLICATE_CALL = "duplicate_call"
    FLOW_BLOCKED = "flow_blocked"
    LOCKED_OUT = "locked_out"
    UNKNOWN_RESOURCE = "unknown_resource"
    UNKNOWN_PROMPT = "unknown_prompt"


def denial(reason: Reason | str, detail: str) -> str:
    """The one line a refused call returns to the model: `denied (limit_exceeded): amount must be
    <= 100`."""
    return f"denied ({reason}): {detail}"


# Refusals that are not the agent's doing (a pending approval, a broken part), and the lockout
# itself: a lockout does not count them.
NOT_COUNTED = frozenset(
    {
        Reason.APPROVAL_PENDING,
        Reason.LEDGER_UNAVAILABLE,
        Reason.UPSTREAM_UNAVAILABLE,
        Reason.UPSTREAM_TIMEOUT,
        Reason.LOCKED_OUT,
    }
)
