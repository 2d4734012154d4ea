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
    decimals; the window rolls by expiring the oldest rows. The same lines answer `unique` and
    `requires` (the latest allowed call in a scope). Only used under the store's lock, so never
    by two threads at once."""

    def __init__(self) -> None:
        # (server, tool, by, sum, per) -> the last entry id read, and one tally per scope value
        self._lines: dict[tuple[Any, ...], tuple[int, dict[Scope, _Tally]]] = {}

    def spent(self, window: SQLiteWindow, server: str, tool: str, budget: Budget, scope: Scope) -> Decimal:
        """What `Window.spent` returns, read through `window`."""
        tally = self._line(window, server, tool, budget.by, budget.sum, budget.per).get(scope)
        return tally.total_since(window.since(budget.per)) if tally else _ZERO

    def latest(
        self, window: SQLiteWindow, server: str, tool: str, seconds: float, scope: Scope, *, ok: bool
    ) -> tuple[str, str] | None:
        """What `Window.earlier` returns, read through `window`."""
        by = tuple(key for key, _ in scope)
        tally = self._line(window, server, tool, by, None, seconds).get(scope)
        if tally is None:
            return None
        tally.total_since(window.since(seconds))
        for ts, _, call_id in reversed(tally.rows):
            if not ok or window.outcome_of(call_id) == "ok":
                return call_id, ts
        return None

    def _line(
        self,
        window: SQLiteWindow,
        server: str,
        tool: str,
        by: tuple[str, ...],
        sum_of: str | None,
        per: float,
    ) -> dict[Scope, _Tally]:
        """One line's tallies, caught up with what any process appended since the last look."""
        key = (server, tool, by, sum_of, per)
        line = self._lines.get(key)
        last = window.last_id()  # what this look reads up to: the next one starts after it
        if line is not None:
            seen, tallies = line
            rows = window.allowed(server, tool, after_id=seen) if seen < last else []
        else:
            # First look at this line: read its whole window once.
            tallies = {}
            rows = window.allowed(server, tool, seconds=per)
        for _, ts, call_id, agent, session, arguments in rows:
            args = arguments if type(arguments) is dict else {}
            key_values = tuple([(k, budgets.scope_value(k, agent, session, args)) for k in by])
            amount = _ONE if sum_of is None else budgets.amount_of(args.get(sum_of))
            tally = tallies.get(key_values)
            if tally is None:
                tally = tallies[key_values] = _Tally()
            tally.add(ts, amount or _ZERO, call_id)
        # Up to the last entry, whatever the rows were: a line of a tool no one calls (a `requires`)
        # must not read every later entry again on each look.
        self._lines[key] = (last, tallies)
        return tallies


class _Tally:
    def __init__(self) -> None:
        self.rows: deque[tuple[str, Decimal, str]] = deque()  # (ts, amount, call id), oldest first
        self.total = Decimal(0)

    def add(self, ts: str, amount: Decimal, call_id: str) -> None:
        self.rows.append((ts, amount, call_id))
        try:
            self.total = budgets.EXACT.add(self.total, amount)
        except ArithmeticError:  # a history too precise to sum exactly counts as spent in full
            self.total = Decimal("Infinity")

    def total_since(self, since: str) -> Decimal:
        while self.rows and self.rows[0][0] <= since:
            _, amount, _ = self.rows.popleft()
            if self.total.is_finite():
                self.total = budgets.EXACT.subtract(self.total, amount)
        return self.total
