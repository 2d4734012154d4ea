"""Escalation across calls, in the policy's terms: what a call's grant asks of the history (the
calls that must come first, the marks that block it, the marks it sets) and how each refusal is
worded so the model can act on it. Pure: the ledger's answers are passed in (read inside the
transaction that records the call)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from mcp_guard.manifest import BlockedAfter, Grant
from mcp_guard.policy.arguments import Violation
from mcp_guard.policy.budgets import arg_scope, scope_value
from mcp_guard.policy.durations import format_duration
from mcp_guard.policy.reasons import Reason

Scope = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Prerequisite:
    """One `requires` entry for one call: an allowed call of `server` `tool` with outcome ok
    within `within` seconds, by the same agent in the same session, whose `match`ed arguments
    (the required call's, this call's) have this call's values; `scope` says so in the ledger's
    terms (budget scope keys and values)."""

    server: str
    tool: str
    within: float
    match: tuple[tuple[str, str], ...]
    first: str  # the required tool's advertised name, for the refusal
    scope: Scope = ()

    def scoped(self, agent: str, session: str | None, arguments: Mapping[str, Any]) -> Prerequisite:
        """The same prerequisite in the scope of this call's agent, session and arguments."""
        keys = (("agent", agent), ("session", scope_value("session", agent, session, arguments)))
        pairs = tuple((f"arg:{theirs}", arg_scope(arguments.get(ours))) for theirs, ours in self.match)
        return Prerequisite(self.server, self.tool, self.within, self.match, self.first, keys + pairs)

    def missing(self) -> Violation:
        """prerequisite_missing, naming the tool to call first and the arguments that must match."""
        same = f" with the same {', '.join(ours for _, ours in self.match)}" if self.match else ""
        detail = f"call {self.first}{same} first (within {format_duration(self.within)})"
        return Violation(Reason.PREREQUISITE_MISSING, detail)


def required(grant: Grant, server: str, prefixes: Mapping[str, str]) -> tuple[Prerequisite, ...]:
    """A grant's `requires`, unscoped (see `Prerequisite.scoped`)."""
    out: list[Prerequisite] = []
    for req in grant.requires:
        target_server, tool = req.target(server, prefixes)
        first = prefixes.get(target_server, f"{target_server}__") + tool
        out.append(Prerequisite(target_server, tool, req.within, tuple(sorted(req.match.items())), first))
    return tuple(out)


def prerequisites(
    grant: Grant, server: str, prefixes: Mapping[str, str], arguments: Mapping[str, Any]
) -> tuple[Prerequisite, ...] | Violation:
    """A grant's `requires` for one call (unscoped), or the refusal of a call that lacks an
    argument one of them must match (nothing can match an absent value)."""
    found = required(grant, server, prefixes)
    for pre in found:
        if any(ours not in arguments for _, ours in pre.match):
            return pre.missing()
    return found


@dataclass(frozen=True, slots=True)
class Marked:
    """A mark a session carries: set by `tool` (advertised name) at `ts`, in force until `until`."""

    mark: str
    tool: str
    ts: str
    until: str


def blocked(rule: BlockedAfter, carried: Collection[Marked]) -> Violation | None:
    """flow_blocked when the session carries one of the rule's marks (newest first)."""
    for found in carried:
        if found.mark in rule.marks:
            detail = (
                f"this session carries the mark {found.mark!r}, set by {found.tool} at {found.ts}; "
                f"this tool is refused until {found.until}"
            )
            return Violation(Reason.FLOW_BLOCKED, detail)
    return None


def blocked_sentence(rule: BlockedAfter) -> str:
    """The one sentence a blocked tool's advertised description gains."""
    marks = ("the mark " if len(rule.marks) == 1 else "one of the marks ") + ", ".join(rule.marks)
    return f"Refused for {format_duration(rule.within)} after a call in this session that sets {marks}."
