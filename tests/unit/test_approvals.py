"""Approvals, pure: the digest an approval is bound to, which calls need one, and the state of a
request folded from the ledger's approval events. Tables of values; no event loop, no files."""

from __future__ import annotations

import re
from typing import Any

import pytest

from mcp_guard.manifest import Approval
from mcp_guard.policy.approvals import (
    APPROVE,
    DENY,
    EXPIRED,
    REQUEST,
    USE,
    Request,
    digest,
    latest,
    needs_approval,
    pending,
    verdict,
)

REFUND = {"order_id": "ORD-1001", "amount": 75, "currency": "USD"}

# Fixed-width UTC stamps, as the ledger writes them: text order is time order.
T0 = "2026-01-01T10:00:00.000000Z"
T1 = "2026-01-01T10:00:05.000000Z"
T2 = "2026-01-01T10:00:10.000000Z"
EXPIRES = "2026-01-01T10:15:00.000000Z"
AT_EXPIRY = EXPIRES
AFTER = "2026-01-01T10:15:00.000001Z"
LATER = "2026-01-01T11:00:00.000000Z"


# -- digest --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changed",
    [
        {**REFUND, "amount": 76},
        {**REFUND, "amount": 75.5},
        {**REFUND, "amount": "75"},
        {**REFUND, "order_id": "ORD-1002"},
        {**REFUND, "order_id": "ord-1001"},
        {**REFUND, "order_id": "ORD-1001 "},
        {**REFUND, "currency": "EUR"},
        {**REFUND, "note": ""},
        {**REFUND, "note": None},
        {k: v for k, v in REFUND.items() if k != "currency"},
        {**REFUND, "Amount": 75},
        {**REFUND, "meta": {"a": [1, 2]}},
    ],
    ids=lambda v: repr(v)[:60],
)
def test_the_digest_differs_for_any_change_of_the_arguments(changed: dict[str, Any]) -> None:
    assert digest(changed) != digest(REFUND)


def test_the_digest_differs_for_nested_changes_and_list_order() -> None:
    base = {"meta": {"a": [1, 2], "b": {"c": True}}}
    for changed in (
        {"meta": {"a": [2, 1], "b": {"c": True}}},
        {"meta": {"a": [1, 2], "b": {"c": 1}}},
        {"meta": {"a": [1, 2], "b": {"c": True}, "d": None}},
        {"meta": {"a": [1, 2, None], "b": {"c": True}}},
    ):
        assert digest(changed) != digest(base)


def test_the_digest_is_the_same_whatever_the_key_order() -> None:
    reordered = {"currency": "USD", "amount": 75, "order_id": "ORD-1001"}
    assert list(reordered) != list(REFUND)
    assert digest(reordered) == digest(REFUND)
    nested_a = {"x": {"b": 1, "a": [{"d": 2, "c": 3}]}, "y": 0}
    nested_b = {"y": 0, "x": {"a": [{"c": 3, "d": 2}], "b": 1}}
    assert digest(nested_a) == digest(nested_b)


def test_the_digest_is_a_sha256_hex_string() -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", digest(REFUND))
    assert re.fullmatch(r"[0-9a-f]{64}", digest({}))


def test_the_digest_refuses_values_that_are_not_json() -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        digest({"amount": float("nan")})


# -- needs_approval ------------------------------------------------------------------------------

OVER_50 = Approval.model_validate(
    {"when": {"amount": {"exclusiveMinimum": 50}}, "wait": "1s", "timeout": "2s"}
)
ALWAYS = Approval.model_validate({"wait": "1s"})
OVER_50_IN_EUR = Approval.model_validate(
    {"when": {"amount": {"exclusiveMinimum": 50}, "currency": {"enum": ["EUR"]}}}
)
WITHOUT_NOTE = Approval.model_validate({"when": {"note": False}})
EMPTY_WHEN = Approval.model_validate({"when": {}})


@pytest.mark.parametrize(
    ("approval", "arguments", "needed"),
    [
        (None, REFUND, False),
        (ALWAYS, REFUND, True),
        (ALWAYS, {}, True),
        (ALWAYS, {"amount": 1}, True),
        (EMPTY_WHEN, REFUND, True),
        (OVER_50, {**REFUND, "amount": 75}, True),
        (OVER_50, {**REFUND, "amount": 50.01}, True),
        (OVER_50, {**REFUND, "amount": 1e308}, True),
        (OVER_50, {**REFUND, "amount": 40}, False),
        (OVER_50, {**REFUND, "amount": 50}, False),
        (OVER_50, {**REFUND, "amount": 0}, False),
        (OVER_50, {"order_id": "ORD-1001", "currency": "USD"}, True),  # absent: matches
        (OVER_50, {}, True),
        (OVER_50, {**REFUND, "amount": 75, "note": "x"}, True),  # unlisted arguments do not matter
        (OVER_50_IN_EUR, {**REFUND, "amount": 75, "currency": "EUR"}, True),
        (OVER_50_IN_EUR, {**REFUND, "amount": 75, "currency": "USD"}, False),
        (OVER_50_IN_EUR, {**REFUND, "amount": 40, "currency": "EUR"}, False),
        (OVER_50_IN_EUR, {"order_id": "ORD-1001", "amount": 75}, True),
        (WITHOUT_NOTE, REFUND, True),  # `false` matches only when the argument is absent
        (WITHOUT_NOTE, {**REFUND, "note": "hi"}, False),
    ],
)
def test_a_call_needs_approval_when_each_listed_argument_is_absent_or_valid(
    approval: Approval | None, arguments: dict[str, Any], needed: bool
) -> None:
    assert needs_approval(approval, arguments) is needed


def test_an_approval_block_without_durations_waits_30s_and_stays_open_15m() -> None:
    assert (ALWAYS.wait, ALWAYS.timeout) == (1.0, 900.0)
    assert (OVER_50_IN_EUR.wait, OVER_50_IN_EUR.timeout) == (30.0, 900.0)


# -- latest and verdict --------------------------------------------------------------------------

D = digest(REFUND)
OTHER = digest({**REFUND, "amount": 76})


def request(rid: str = "r1", dig: str = D, at: str = T0, expires: str = EXPIRES) -> dict[str, Any]:
    return {"id": rid, "action": REQUEST, "digest": dig, "requested_at": at, "expires_at": expires}


def act(action: str, rid: str = "r1", by: str | None = None) -> dict[str, Any]:
    return {"id": rid, "action": action} | ({"by": by} if by else {})


def state(events: list[dict[str, Any]], now: str = T2, dig: str = D) -> str:
    return verdict(latest(events, dig), now)


@pytest.mark.parametrize(
    ("events", "now", "expected"),
    [
        ([], T2, "new"),
        ([request(dig=OTHER)], T2, "new"),  # another call's request does not cover this one
        ([request()], T2, "pending"),
        ([request(), act(APPROVE)], T2, "use"),
        ([request(), act(APPROVE), act(USE)], T2, "new"),  # single use
        ([request(), act(DENY)], T2, "denied"),
        ([request(), act(DENY)], AT_EXPIRY, "new"),  # a denial holds until the timeout
        ([request(), act(DENY)], LATER, "new"),
        ([request()], AT_EXPIRY, "expired"),
        ([request()], AFTER, "expired"),
        ([request(), act(EXPIRED)], AFTER, "new"),  # said once, then a new request
        ([request(), act(APPROVE)], AFTER, "expired"),  # an approval not used in time lapses too
        ([request(), act(APPROVE), act(EXPIRED)], AFTER, "new"),
        ([request(), act(DENY), act(APPROVE)], T2, "denied"),  # a denial is final
        ([request(), act(APPROVE), act(DENY)], T2, "use"),  # so is an approval
        ([request(), act(USE)], T2, "pending"),  # a use without an approval changes nothing
        ([request(), act(APPROVE), act(USE), act(USE)], T2, "new"),
        ([request(), act(APPROVE, rid="r2")], T2, "pending"),  # another request's decision
        ([request(), act(APPROVE), act(USE), request("r2", at=T1)], T2, "pending"),
        ([request(), act(DENY), request("r2", at=T1)], T2, "pending"),  # the latest request counts
        ([request(), request("r2", at=T1), act(APPROVE, rid="r1")], T2, "pending"),
        ([request(), request("r2", at=T1), act(APPROVE, rid="r2")], T2, "use"),
    ],
)
def test_the_verdict_follows_the_latest_request_for_the_exact_arguments(
    events: list[dict[str, Any]], now: str, expected: str
) -> None:
    assert state(events, now) == expected


def test_the_latest_request_says_who_decided_it_and_when_it_expires() -> None:
    req = latest([request(), act(APPROVE, by="alice")], D)
    assert req == Request("r1", T0, EXPIRES, "approved", decided_by="alice")
    used = latest([request(), act(APPROVE, by="alice"), act(USE)], D)
    assert used is not None
    assert (used.status, used.decided_by) == ("used", "alice")
    denied = latest([request(), act(DENY, by="bob")], D)
    assert denied is not None
    assert (denied.status, denied.decided_by) == ("denied", "bob")
    assert latest([request(dig=OTHER)], D) is None


def test_a_request_lapses_at_its_expiry_time_not_after() -> None:
    req = latest([request()], D)
    assert req is not None
    assert not req.lapsed(T2)
    assert req.lapsed(AT_EXPIRY)
    assert req.lapsed(LATER)


def test_a_full_life_pending_approved_used_then_new() -> None:
    events: list[dict[str, Any]] = [request()]
    assert state(events) == "pending"
    events.append(act(APPROVE, by="op"))
    assert state(events) == "use"
    assert state(events, dig=OTHER) == "new"  # only the identical call may use it
    events.append(act(USE))
    assert state(events) == "new"


# -- pending -------------------------------------------------------------------------------------


def test_pending_lists_only_undecided_unexpired_requests() -> None:
    events = [
        request("open"),
        request("approved"),
        act(APPROVE, "approved"),
        request("used"),
        act(APPROVE, "used"),
        act(USE, "used"),
        request("denied"),
        act(DENY, "denied"),
        request("lapsed", expires=T1),
        request("told", expires=T1),
        act(EXPIRED, "told"),
        request("late", at=T1),
    ]
    assert list(pending(events, T2)) == ["open", "late"]
    assert pending(events, T2)["open"] == request("open")
    assert "lapsed" in pending(events, T0)  # before its expiry it was still open
    assert pending(events, AT_EXPIRY) == {}


def test_pending_is_empty_without_requests() -> None:
    assert pending([], T2) == {}
    assert pending([act(APPROVE, "ghost"), act(DENY, "ghost")], T2) == {}
