"""Budgets: what a call is charged, what the history already spent, and whether the rolling
window allows it. Tables of values; the history is summed by the real ledger in a temporary file,
as the guard sums it."""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from mcp_guard.ledger.entries import CallRecord, decision_fields
from mcp_guard.ledger.sqlite.engine import Ledger
from mcp_guard.manifest import Budget, Grant
from mcp_guard.policy.arguments import Violation
from mcp_guard.policy.budgets import Charge, amount_of, charges, check_budgets, scope_value

AGENT = "support-bot"
SESSION = "sess-1"


def budget(**fields: Any) -> Budget:
    return Budget.model_validate(fields)


def grant(*budgets: dict[str, Any]) -> Grant:
    return Grant.model_validate({"allow": ["role:support"], "budgets": list(budgets)})


PER_DAY = {"sum": "amount", "max": 500, "per": "1d"}
CALLS_PER_HOUR = {"max": 20, "per": "1h"}
PER_ORDER = {"sum": "amount", "max": 150, "per": "1d", "by": ["arg:order_id"]}
REFUND = {"order_id": "ORD-1001", "amount": 40, "currency": "USD"}


def one_charge(
    budget_fields: dict[str, Any], arguments: dict[str, Any], session: str | None = SESSION
) -> Charge:
    found = charges(grant(budget_fields), AGENT, session, arguments)
    assert isinstance(found, list), found
    assert len(found) == 1
    return found[0]


# -- charges ------------------------------------------------------------------------------------


def test_a_sum_budget_charges_the_amount_and_a_count_budget_charges_one_call() -> None:
    found = charges(grant(PER_DAY, CALLS_PER_HOUR), AGENT, SESSION, REFUND)
    assert isinstance(found, list)
    assert [c.amount for c in found] == [Decimal(40), Decimal(1)]
    assert [c.budget.sum for c in found] == ["amount", None]


def test_several_budgets_give_one_charge_each_in_manifest_order() -> None:
    found = charges(grant(PER_DAY, CALLS_PER_HOUR, PER_ORDER), AGENT, SESSION, REFUND)
    assert isinstance(found, list)
    assert [c.budget.max for c in found] == [Decimal(500), Decimal(20), Decimal(150)]


def test_a_grant_without_budgets_charges_nothing() -> None:
    assert charges(grant(), AGENT, SESSION, REFUND) == []


@pytest.mark.parametrize(
    ("by", "session", "scope"),
    [
        (None, SESSION, (("agent", AGENT),)),
        (["agent"], SESSION, (("agent", AGENT),)),
        (["session"], SESSION, (("session", SESSION),)),
        (["session"], None, (("session", f"agent:{AGENT}"),)),  # no session: the agent's
        (["arg:order_id"], SESSION, (("arg:order_id", "s:ord-1001"),)),
        (["agent", "arg:order_id"], SESSION, (("agent", AGENT), ("arg:order_id", "s:ord-1001"))),
        (["arg:missing"], SESSION, (("arg:missing", "j:null"),)),
    ],
)
def test_the_scope_of_a_charge_holds_one_value_per_scope_key(
    by: list[str] | None, session: str | None, scope: tuple[tuple[str, str], ...]
) -> None:
    fields = dict(CALLS_PER_HOUR) | ({"by": by} if by is not None else {})
    assert one_charge(fields, REFUND, session).scope == scope


@pytest.mark.parametrize(
    "variant",
    ["ORD-1001", "ord-1001", "Ord-1001", "ＯＲＤ－１００１", "ｏｒｄ-1001", " ORD-1001 ", "ORD-1001\t"],
)
def test_case_and_width_variants_of_an_order_id_share_one_arg_scope(variant: str) -> None:
    assert scope_value("arg:order_id", AGENT, SESSION, {"order_id": variant}) == "s:ord-1001"
    assert one_charge(PER_ORDER, {**REFUND, "order_id": variant}).scope == (("arg:order_id", "s:ord-1001"),)


def test_an_arg_scope_does_not_confuse_a_string_with_a_number_or_null() -> None:
    values = {scope_value("arg:x", AGENT, None, {"x": v}) for v in ("1", 1, None, "null", [1], {"a": 1})}
    assert len(values) == 6


def test_a_sum_budget_makes_its_argument_required() -> None:
    found = charges(grant(PER_DAY), AGENT, SESSION, {"order_id": "ORD-1001", "currency": "USD"})
    assert found == Violation("invalid_arguments", "amount is required")


def test_a_count_budget_requires_no_argument() -> None:
    assert one_charge(CALLS_PER_HOUR, {}).amount == Decimal(1)


@pytest.mark.parametrize(
    "amount",
    [
        pytest.param("40", id="string"),
        pytest.param("40.0", id="decimal-string"),
        pytest.param(-5, id="negative-int"),
        pytest.param(-0.01, id="negative-float"),
        pytest.param(-1e308, id="negative-huge"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(float("-inf"), id="minus-inf"),
        pytest.param(True, id="true"),
        pytest.param(False, id="false"),
        pytest.param(None, id="null"),
        pytest.param([40], id="list"),
        pytest.param({"value": 40}, id="object"),
    ],
)
def test_an_amount_that_is_not_a_finite_number_at_least_zero_is_invalid_arguments(amount: Any) -> None:
    found = charges(grant(PER_DAY), AGENT, SESSION, {**REFUND, "amount": amount})
    assert isinstance(found, Violation)
    assert found.reason == "invalid_arguments"
    assert "amount" in found.detail


def test_a_refusal_of_one_budget_refuses_the_whole_call_whatever_the_others_say() -> None:
    found = charges(grant(CALLS_PER_HOUR, PER_DAY), AGENT, SESSION, {**REFUND, "amount": -1})
    assert isinstance(found, Violation)
    assert found.reason == "invalid_arguments"


@pytest.mark.parametrize(
    ("amount", "charged"),
    [
        (0, Decimal(0)),
        (-0.0, Decimal(0)),  # -0 charges nothing, and refills nothing
        (0.1, Decimal("0.1")),  # the number as sent, not the binary float 0.1000000000000000055...
        (0.3, Decimal("0.3")),
        (99.99, Decimal("99.99")),
        (1e-300, Decimal("1e-300")),
        (1e308, Decimal("1e308")),
        (2**53, Decimal(2**53)),
        (10**40, Decimal(10**40)),  # a Python int is exact, however large
    ],
)
def test_amounts_are_charged_exactly_as_sent(amount: Any, charged: Decimal) -> None:
    got = one_charge(PER_DAY, {**REFUND, "amount": amount}).amount
    assert got == charged
    assert got >= 0
    assert amount_of(amount) == charged


# -- spent ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spent:
    """One earlier allowed call of billing.refund, as the ledger records it."""

    agent: str
    session: str | None
    arguments: dict[str, Any]


def row(agent: str = AGENT, session: str | None = SESSION, **arguments: Any) -> Spent:
    return Spent(agent, session, arguments)


def spent(charge: Charge, history: list[Spent]) -> Decimal:
    """What the real ledger says the history spent in the charge's scope (exactly)."""
    with tempfile.TemporaryDirectory() as folder, Ledger.open(Path(folder) / "ledger.db") as ledger:
        with ledger._transaction() as conn:  # one transaction: fast for 10,000 rows
            for past in history:
                record = CallRecord(uuid.uuid4().hex, past.agent, past.session, "billing", "refund",
                                    past.arguments, "allow", None, None, "0" * 64)  # fmt: skip
                ledger._append(conn, decision_fields(record), None)
        return ledger.peek(lambda w: w.spent("billing", "refund", charge.budget, charge.scope))


def test_a_sum_budget_adds_the_amounts_of_the_calls_in_its_scope_only() -> None:
    charge = one_charge(PER_DAY, REFUND)
    history = [
        row(amount=100, order_id="ORD-1001"),
        row(amount=0.5, order_id="ORD-1002"),
        row(agent="finance-bot", amount=1000),  # another agent's spend is not this agent's
        row(session="other", amount=7),  # agent scope: every session of the agent
    ]
    assert spent(charge, history) == Decimal("107.5")


def test_a_count_budget_counts_calls_whatever_their_arguments() -> None:
    charge = one_charge(CALLS_PER_HOUR, REFUND)
    history = [row(), row(amount=1e308), row(amount="x"), row(agent="finance-bot")]
    assert spent(charge, history) == Decimal(3)


def test_a_session_scope_counts_only_the_calls_of_that_session() -> None:
    charge = one_charge({**CALLS_PER_HOUR, "by": ["session"]}, REFUND)
    history = [row(), row(), row(session="other"), row(agent="finance-bot", session=SESSION)]
    # finance-bot's call in a session of the same id: another agent, the same session value
    assert spent(charge, history) == Decimal(3)


def test_without_a_session_the_session_scope_is_the_agent() -> None:
    charge = one_charge({**CALLS_PER_HOUR, "by": ["session"]}, REFUND, session=None)
    history = [row(session=None), row(session=None), row(agent="finance-bot", session=None)]
    assert spent(charge, history) == Decimal(2)


def test_an_arg_scope_spans_agents_and_case_and_width_variants_of_the_value() -> None:
    charge = one_charge(PER_ORDER, REFUND)
    history = [
        row(amount=50, order_id="ORD-1001"),
        row(agent="finance-bot", amount=30, order_id="ord-1001"),
        row(agent="qa-bot", amount=20, order_id="ＯＲＤ－１００１"),
        row(amount=1000, order_id="ORD-1002"),
    ]
    assert spent(charge, history) == Decimal(100)


def test_history_rows_with_negative_or_unreadable_amounts_never_refill_a_budget() -> None:
    charge = one_charge(PER_DAY, REFUND)
    history = [
        row(amount=300),
        row(amount=-200),
        row(amount="-200"),
        row(amount=None),
        row(amount=True),
        row(),  # no amount at all
    ]
    assert spent(charge, history) == Decimal(300)


def test_ten_thousand_cents_sum_to_exactly_one_hundred() -> None:
    charge = one_charge({"sum": "amount", "max": 100, "per": "1d"}, REFUND)
    assert spent(charge, [row(amount=0.01)] * 10_000) == Decimal(100)


# -- check_budgets -----------------------------------------------------------------------------


def check(budget_fields: dict[str, Any], already: Any, amount: Any) -> Violation | None:
    charge = one_charge(budget_fields, {**REFUND, "amount": amount})
    return check_budgets("refund", [(charge, Decimal(str(already)))])


@pytest.mark.parametrize(
    ("already", "amount"),
    [(0, 500), (480, 20), (499.99, 0.01), (0, 0), (500, 0), (460, 40)],
)
def test_a_call_that_keeps_the_total_at_or_under_max_is_allowed(already: Any, amount: Any) -> None:
    assert check(PER_DAY, already, amount) is None


@pytest.mark.parametrize(
    ("already", "amount", "left"),
    [
        (480, 40, "20 of 500"),
        (480, 20.01, "20 of 500"),
        (0, 500.01, "500 of 500"),
        (500, 0.01, "0 of 500"),
        (499.99, 0.02, "0.01 of 500"),
        (0, 1e308, "500 of 500"),
        (0, 10**40, "500 of 500"),
        (600, 1, "0 of 500"),  # over already (max lowered since): nothing left, never negative
    ],
)
def test_the_call_that_would_overspend_is_refused_saying_what_is_left(
    already: Any, amount: Any, left: str
) -> None:
    found = check(PER_DAY, already, amount)
    assert isinstance(found, Violation)
    assert found.reason == "budget_exhausted"
    assert f"{left} left" in found.detail
    assert "refund" in found.detail


def test_a_count_budget_refuses_the_call_past_max_saying_no_calls_are_left() -> None:
    fields = {"max": 3, "per": "1h"}
    assert check(fields, 2, 0) is None
    found = check(fields, 3, 0)
    assert isinstance(found, Violation)
    assert found.reason == "budget_exhausted"
    assert "0 of 3 calls left" in found.detail


def test_the_first_budget_that_would_overspend_is_the_one_reported() -> None:
    per_day, per_order = (one_charge(b, {**REFUND, "amount": 40}) for b in (PER_DAY, PER_ORDER))
    assert check_budgets("refund", [(per_day, Decimal(0)), (per_order, Decimal(100))]) is None
    found = check_budgets("refund", [(per_day, Decimal(0)), (per_order, Decimal(120))])
    assert isinstance(found, Violation)
    assert "30 of 150 left" in found.detail
    found = check_budgets("refund", [(per_day, Decimal(470)), (per_order, Decimal(120))])
    assert isinstance(found, Violation)
    assert "30 of 500 left" in found.detail


def test_three_refunds_of_a_tenth_fit_a_budget_of_three_tenths_and_a_fourth_does_not() -> None:
    # In binary floating point 0.1 + 0.1 + 0.1 > 0.3, which would refuse the third refund.
    fields = {"sum": "amount", "max": 0.3, "per": "1d"}
    charge = one_charge(fields, {**REFUND, "amount": 0.1})
    assert charge.budget.max == Decimal("0.3")
    history: list[Spent] = []
    for _ in range(3):
        assert check_budgets("refund", [(charge, spent(charge, history))]) is None
        history.append(row(amount=0.1))
    found = check_budgets("refund", [(charge, spent(charge, history))])
    assert isinstance(found, Violation)
    assert found.reason == "budget_exhausted"
    assert "0 of 0.3 left" in found.detail


def test_sums_like_point_one_plus_point_two_are_exact_against_a_max_of_point_three() -> None:
    fields = {"sum": "amount", "max": 0.3, "per": "1d"}
    charge = one_charge(fields, {**REFUND, "amount": 0.2})
    assert check_budgets("refund", [(charge, spent(charge, [row(amount=0.1)]))]) is None
    charge = one_charge(fields, {**REFUND, "amount": 0.20000000000000004})
    assert check_budgets("refund", [(charge, spent(charge, [row(amount=0.1)]))]) is not None


@pytest.mark.parametrize("tiny", [1e-26, 1e-40, 5e-324], ids=["1e-26", "1e-40", "smallest-float"])
def test_a_tiny_amount_on_an_exhausted_budget_is_refused_however_small(tiny: float) -> None:
    # The total including the call, 500 + tiny, is more than 500; a sum rounded to 28 digits is not.
    assert isinstance(check(PER_DAY, 500, tiny), Violation)


def test_many_tiny_calls_add_up_exactly_and_are_stopped_at_max() -> None:
    fields = {"sum": "amount", "max": 1, "per": "1d"}
    charge = one_charge(fields, {**REFUND, "amount": 0.001})
    history = [row(amount=0.001)] * 999
    assert check_budgets("refund", [(charge, spent(charge, history))]) is None
    history.append(row(amount=0.001))
    assert check_budgets("refund", [(charge, spent(charge, history))]) is not None
