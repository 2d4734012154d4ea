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
    DUPLICATE_CALL = "duplicate_call"

    @property
    def counts_against_agent(self) -> bool:
        """Whether the refusal is the agent's doing (not a pending approval or a broken part)."""
        return self not in _NOT_THE_AGENTS


def denial(reason: Reason | str, detail: str) -> str:
    """The one line a refused call returns to the model: `denied (limit_exceeded): amount must be
    <= 100`."""
    return f"denied ({reason}): {detail}"


_NOT_THE_AGENTS = frozenset(
    {Reason.APPROVAL_PENDING, Reason.LEDGER_UNAVAILABLE, Reason.UPSTREAM_UNAVAILABLE, Reason.UPSTREAM_TIMEOUT}
)
