"""A grant's `unique`: the scope a call must not repeat, as the pure policy computes it. The
ledger side (`Window.earlier`) is in the store contract; the guard's refusal in-process and across
processes."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_guard.manifest import Grant
from mcp_guard.policy.budgets import Once, once, rescoped_once

CALL = {"order_id": "ORD-1004", "amount": 40, "currency": "USD"}


@pytest.mark.parametrize(
    ("unique", "arguments", "scope"),
    [
        ({"per": "1d"}, CALL, (("arguments", 'j:{"amount":40,"currency":"USD","order_id":"ORD-1004"}'),)),
        ({"per": "1h", "by": ["arg:order_id"]}, CALL, (("arg:order_id", "s:ord-1004"),)),
        (
            {"per": "1h", "by": ["arg:order_id"]},
            {**CALL, "order_id": " ＯＲＤ-1004"},
            (("arg:order_id", "s:ord-1004"),),
        ),
        ({"per": "1h", "by": ["arg:amount"]}, CALL, (("arg:amount", "j:40"),)),
        ({"per": "1h", "by": ["arg:amount"]}, {**CALL, "amount": "40"}, (("arg:amount", "s:40"),)),
        ({"per": "1h", "by": ["agent", "session"]}, CALL, (("agent", "bot"), ("session", "s1"))),
    ],
)
def test_the_scope_a_unique_call_must_not_repeat(
    unique: dict[str, Any], arguments: dict[str, Any], scope: Any
) -> None:
    grant = Grant.model_validate({"allow": ["bot"], "unique": unique})
    found = once(grant, "bot", "s1", arguments)
    assert found == Once(grant.unique.per, scope)  # type: ignore[union-attr]


def test_a_grant_without_unique_asks_nothing_and_the_scope_follows_the_recorded_arguments() -> None:
    assert once(Grant(allow=("bot",)), "bot", None, CALL) is None
    grant = Grant.model_validate({"allow": ["bot"], "unique": {"per": "1d", "by": ["arg:note"]}})
    found = once(grant, "bot", None, {"note": "sk_live_0123456789abcdef"})
    assert found is not None
    assert rescoped_once(found, "bot", None, {"note": "[REDACTED]"}).scope == (("arg:note", "s:[redacted]"),)


@pytest.mark.parametrize(
    "unique",
    [{"by": ["arg:order_id"]}, {"per": "soon"}, {"per": "1d", "by": ["order_id"]}, {"per": "1d", "extra": 1}],
)
def test_a_malformed_unique_is_a_load_error(unique: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="unique"):
        Grant.model_validate({"allow": ["bot"], "unique": unique})
