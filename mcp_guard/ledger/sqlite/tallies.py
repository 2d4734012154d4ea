"""Budget spend for the SQLite store: running totals per process, caught up inside each
transaction from the rows appended since the last look. That catch-up is sound only because
SQLite commits writers one at a time (BEGIN IMMEDIATE), so ids are commit-ordered; it stays
private here, behind `Window.spent`. Imports nothing from mcp_guard but policy.budgets (amounts and
scopes) and the ledger's values."""

from __future__ import annotations

from collections import deque
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from mcp_guard.ledger.base import Scope
from mcp_guard.policy import budgets

if TYPE_CHECKING:
    from mcp_guard.ledger.sqlite.window import SQLiteWindow
    from mcp_guard.manifest import Budget

_ZERO, _ONE = Decimal(0), Decimal(1)


class Tallies:
    """Running budget totals of one store, caught up inside each transaction (the rows any process
    appended since the last look), so a check costs O(new rows), not O(window). Totals are exact
    decimals; the window rolls by expiring the oldest rows. Only used under the store's lock, so
    never by two threads at once."""

    def __init__(self) -> None:
        # (server, tool, by, sum, per) -> the last entry id read, and one tally per scope value
        self._lines: dict[tuple[Any, ...], tuple[int, dict[Scope, _Tally]]] = {}

    def spent(self, window: SQLiteWindow, server: str, tool: str, budget: Budget, scope: Scope) -> Decimal:
        """What `Window.spent` returns, read through `window`."""
        by, sum_of = budget.by, budget.sum
        key = (server, tool, by, sum_of, budget.per)
        line = self._lines.get(key)
        if line is not None:
            seen, tallies = line
            rows = window.allowed(server, tool, after_id=seen)
        else:
            # First look at this budget: read its whole window once.
            seen, tallies = window.last_id(), {}
            rows = window.allowed(server, tool, seconds=budget.per)
        for _, ts, agent, session, arguments in rows:
            args = arguments if type(arguments) is dict else {}
            key_values = tuple([(k, budgets.scope_value(k, agent, session, args)) for k in by])
            amount = _ONE if sum_of is None else budgets.amount_of(args.get(sum_of))
            tally = tallies.get(key_values)
            if tally is None:
                tally = tallies[key_values] = _Tally()
            tally.add(ts, amount or _ZERO)
        if rows:
            seen = max(seen, rows[-1][0])  # in id order
        self._lines[key] = (seen, tallies)
        tally = tallies.get(scope)
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
