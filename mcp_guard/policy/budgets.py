"""Budgets: what a call would spend against each budget of its grant, how scopes and amounts
compare, and whether the rolling window allows it. Pure: the spend so far is passed in (summed
from the ledger inside the transaction that records the call)."""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Context as _Context
from decimal import Decimal, Inexact, InvalidOperation, Overflow
from typing import Any

from mcp_guard.manifest import Budget, Grant
from mcp_guard.policy.arguments import Violation
from mcp_guard.policy.durations import format_duration
from mcp_guard.policy.reasons import Reason

# Sums of doubles as written need up to ~770 significant digits; an inexact sum raises.
EXACT = _Context(prec=2000, Emin=-999999, Emax=999999, traps=[Inexact, InvalidOperation, Overflow])


@dataclass(frozen=True, slots=True)
class Charge:
    """What one call spends against one budget, and the scope it spends in."""

    budget: Budget
    scope: tuple[tuple[str, str], ...]
    amount: Decimal


WHOLE_ARGUMENTS = "arguments"
"""The scope key of `unique` without `by`: the whole canonical arguments."""


@dataclass(frozen=True, slots=True)
class Once:
    """What a `unique` grant asks of the ledger for one call: no allowed call of the same tool
    within `per` seconds with the same scope values."""

    per: float
    scope: tuple[tuple[str, str], ...]


def once(grant: Grant, agent: str, session: str | None, arguments: Mapping[str, Any]) -> Once | None:
    """The uniqueness a call's grant asks for, scoped by the given arguments (as recorded)."""
    if grant.unique is None:
        return None
    keys = grant.unique.by or (WHOLE_ARGUMENTS,)
    return Once(grant.unique.per, tuple((k, scope_value(k, agent, session, arguments)) for k in keys))


def scope_value(key: str, agent: str, session: str | None, arguments: Mapping[str, Any]) -> str:
    """The value a call has for one scope key. `arg:` values are compared case- and
    width-insensitively, so `ORD-1` and `ｏｒｄ-1` share one budget (over-counting is the safe side)."""
    if key == "agent":
        return agent
    if key == "session":
        return session or f"agent:{agent}"
    if key == WHOLE_ARGUMENTS:
        return "j:" + json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return arg_scope(arguments.get(key[4:]))


def arg_scope(value: object) -> str:
    """How an `arg:` scope compares values: strings after NFKC, case folding and trimming."""
    if isinstance(value, str):
        return "s:" + unicodedata.normalize("NFKC", value).casefold().strip()
    return "j:" + json.dumps(value, sort_keys=True, separators=(",", ":"))


def amount_of(value: Any) -> Decimal | None:
    """A spend amount exactly as sent, or None if it is not a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    return amount if amount >= 0 else None


def charges(
    grant: Grant, agent: str, session: str | None, arguments: Mapping[str, Any]
) -> list[Charge] | Violation:
    """The charges of one call, or why its arguments cannot be charged."""
    out: list[Charge] = []
    for budget in grant.budgets:
        amount = Decimal(1)
        if budget.sum is not None:
            if budget.sum not in arguments:
                return Violation(Reason.INVALID_ARGUMENTS, f"{budget.sum} is required")
            found = amount_of(arguments[budget.sum])
            if found is None:
                return Violation(Reason.INVALID_ARGUMENTS, f"{budget.sum} must be a finite number >= 0")
            amount = found
        scope = tuple((key, scope_value(key, agent, session, arguments)) for key in budget.by)
        out.append(Charge(budget, scope, amount))
    return out


def rescoped(charge: Charge, agent: str, session: str | None, arguments: Mapping[str, Any]) -> Charge:
    """The same charge with its scope read from other arguments (e.g. as recorded)."""
    scope = tuple((key, scope_value(key, agent, session, arguments)) for key, _ in charge.scope)
    return Charge(charge.budget, scope, charge.amount)


def rescoped_once(found: Once, agent: str, session: str | None, arguments: Mapping[str, Any]) -> Once:
    """The same uniqueness with its scope read from other arguments (e.g. as recorded)."""
    return Once(found.per, tuple((k, scope_value(k, agent, session, arguments)) for k, _ in found.scope))


def check_budgets(tool: str, pending: Iterable[tuple[Charge, Decimal]]) -> Violation | None:
    """Allowed when every total including this call stays <= max; else say what is left."""
    for charge, already in pending:
        budget = charge.budget
        try:
            over = EXACT.add(already, charge.amount) > budget.max
        except ArithmeticError:  # a sum too precise to hold exactly: refuse rather than round
            over = True
        if over:
            left = max(budget.max - already, Decimal(0))
            window = format_duration(budget.per)
            what = f"{budget.sum} " if budget.sum else ""
            unit = "" if budget.sum else " calls"
            amounts = f"{format_amount(left)} of {format_amount(budget.max)}"
            detail = f"{what}{amounts}{unit} left for {tool} (rolling {window})"
            return Violation(Reason.BUDGET_EXHAUSTED, detail)
    return None


def format_amount(value: Decimal) -> str:
    return format(value.normalize(), "f")
