"""The pure policy core: tables of (call, expected decision). No event loop, no files."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import pytest

from mcp_guard.config import AgentConfig, GuardConfig
from mcp_guard.manifest import Manifest
from mcp_guard.policy.engine import Policy
from mcp_guard.policy.offers import ToolDef
from mcp_guard.wire import parse_strict

REFUND_SCHEMA = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string", "pattern": "^ORD-[0-9]{4,8}$"},
        "amount": {"type": "number", "exclusiveMinimum": 0},
        "currency": {"type": "string", "enum": ["USD", "EUR", "GBP"]},
        "note": {"type": "string", "maxLength": 500},
        "meta": {"type": "object"},
    },
    "required": ["order_id", "amount", "currency"],
}


def _tool(name: str, schema: dict[str, Any]) -> ToolDef:
    return ToolDef(name, schema, hashlib.sha256(json.dumps([name, schema]).encode()).hexdigest())


CATALOG = {
    "billing": (
        _tool("refund", REFUND_SCHEMA),
        _tool("lookup_order", {"type": "object", "properties": {"order_id": {"type": "string"}}}),
        _tool("set_payout_destination", {"type": "object", "properties": {"account": {"type": "string"}}}),
        _tool("unlisted", {"type": "object"}),
    ),
    "tickets": (_tool("refund", {"type": "object", "properties": {"ticket_id": {"type": "string"}}}),),
}

MANIFESTS = [
    Manifest.model_validate(
        {
            "server": "billing",
            "upstream": {"command": "x"},
            "tools": {
                "refund": [
                    {
                        "allow": ["role:support"],
                        "arguments": {
                            "amount": {"exclusiveMinimum": 0, "maximum": 100},
                            "currency": {"enum": ["USD", "EUR"]},
                            "note": False,
                        },
                    },
                    {"allow": ["finance-bot"], "arguments": {"amount": {"maximum": 5000}}},
                ],
                "lookup_order": {"allow": ["*"]},
                "set_payout_destination": {"allow": []},
            },
        }
    ),
    Manifest.model_validate(
        {"server": "tickets", "upstream": {"command": "y"}, "tools": {"refund": {"allow": ["finance-bot"]}}}
    ),
]

POLICY = Policy(
    GuardConfig(
        agents={
            "support-bot": AgentConfig(roles=("support",)),
            "finance-bot": AgentConfig(roles=("finance",)),
            "intern": AgentConfig(),
        }
    ),
    MANIFESTS,
)


def decide(agent: str, name: str, arguments: dict[str, Any]) -> tuple[str | None, str]:
    offers = POLICY.offers(POLICY.agents[agent], CATALOG)
    d = POLICY.decide(name, arguments, offers)
    return (None if d.allowed else d.reason), d.detail


OK = {"order_id": "ORD-1001", "amount": 40, "currency": "USD"}


def with_(**changes: Any) -> dict[str, Any]:
    return {**OK, **changes}


def test_each_agent_is_offered_exactly_its_granted_tools() -> None:
    def names(agent: str) -> set[str]:
        return set(POLICY.offers(POLICY.agents[agent], CATALOG))

    assert names("support-bot") == {"billing__refund", "billing__lookup_order"}
    assert names("finance-bot") == {"billing__refund", "billing__lookup_order", "tickets__refund"}
    assert names("intern") == {"billing__lookup_order"}


def test_an_agent_unknown_to_the_config_is_offered_nothing() -> None:
    from mcp_guard.policy.engine import Agent

    assert POLICY.offers(Agent("ghost", frozenset({"support"})), CATALOG) == {}


def test_the_advertised_schema_carries_the_grant_limits_in_place() -> None:
    offer = POLICY.offers(POLICY.agents["support-bot"], CATALOG)["billing__refund"]
    props = offer.input_schema["properties"]
    assert props["amount"] == {"type": "number", "exclusiveMinimum": 0, "maximum": 100}
    assert props["currency"]["enum"] == ["USD", "EUR"]
    assert "note" not in props
    assert offer.input_schema["additionalProperties"] is False
    assert "allOf" not in offer.input_schema
    # the upstream definition itself is untouched
    assert "maximum" not in REFUND_SCHEMA["properties"]["amount"]  # type: ignore[index]


def test_a_limit_that_is_not_a_bound_or_enum_goes_into_an_allof_inside_the_property() -> None:
    from mcp_guard.policy.schemas import merge_limits

    merged = merge_limits(REFUND_SCHEMA, {"order_id": {"pattern": "^ORD-1"}})
    assert merged["properties"]["order_id"]["allOf"] == [{"pattern": "^ORD-1"}]
    assert merged["properties"]["order_id"]["pattern"] == "^ORD-[0-9]{4,8}$"


def test_the_first_matching_grant_applies_and_a_refusal_never_falls_through() -> None:
    assert decide("support-bot", "billing__refund", with_(amount=400))[0] == "limit_exceeded"
    assert decide("finance-bot", "billing__refund", with_(amount=400))[0] is None


ALLOWED = [
    ("support-bot", "billing__refund", OK),
    ("support-bot", "billing__refund", with_(amount=100)),
    ("support-bot", "billing__refund", with_(amount=99.99)),
    ("support-bot", "billing__refund", with_(amount=5e1)),
    ("support-bot", "billing__lookup_order", {"order_id": "ORD-1"}),
    ("finance-bot", "billing__refund", with_(amount=5000, currency="GBP", note="ok")),
]


@pytest.mark.parametrize(("agent", "name", "arguments"), ALLOWED)
def test_calls_within_the_grant_are_allowed(agent: str, name: str, arguments: dict[str, Any]) -> None:
    assert decide(agent, name, arguments) == (None, "allowed")


# The smuggling table: every case is denied, with the reason code that says why.
DENIED = [
    ("over the cap", "billing__refund", with_(amount=400), "limit_exceeded", "amount must be <= 100"),
    ("just over the cap", "billing__refund", with_(amount=100.0000000001), "limit_exceeded", "<= 100"),
    ("zero", "billing__refund", with_(amount=0), "invalid_arguments", "> 0"),
    ("negative", "billing__refund", with_(amount=-5), "invalid_arguments", "> 0"),
    ("negative zero", "billing__refund", with_(amount=-0.0), "invalid_arguments", "> 0"),
    ("NaN", "billing__refund", with_(amount=math.nan), "invalid_arguments", "finite"),
    ("Infinity", "billing__refund", with_(amount=math.inf), "invalid_arguments", "finite"),
    ("-Infinity", "billing__refund", with_(amount=-math.inf), "invalid_arguments", "finite"),
    ("huge integer", "billing__refund", with_(amount=10**400), "invalid_arguments", "integer within"),
    ("number as a string", "billing__refund", with_(amount="40"), "invalid_arguments", "type number"),
    ("padded string", "billing__refund", with_(amount=" 50 "), "invalid_arguments", "type number"),
    ("boolean for a number", "billing__refund", with_(amount=True), "invalid_arguments", "type number"),
    ("null for a number", "billing__refund", with_(amount=None), "invalid_arguments", "type number"),
    ("currency outside the grant", "billing__refund", with_(currency="GBP"), "limit_exceeded", "one of"),
    ("currency case variant", "billing__refund", with_(currency="usd"), "invalid_arguments", "one of"),
    ("forbidden argument", "billing__refund", with_(note="hi"), "limit_exceeded", "may not be sent"),
    (
        "undeclared argument",
        "billing__refund",
        with_(payout_account="X"),
        "invalid_arguments",
        "not an argument",
    ),
    ("case variant argument", "billing__refund", with_(Amount=1), "invalid_arguments", "not an argument"),
    (
        "missing required",
        "billing__refund",
        {"amount": 4, "currency": "USD"},
        "invalid_arguments",
        "required",
    ),
    ("newline after pattern", "billing__refund", with_(order_id="ORD-1001\n"), "invalid_arguments", "match"),
    (
        "injection after id",
        "billing__refund",
        with_(order_id="ORD-1001; rm -rf /"),
        "invalid_arguments",
        "match",
    ),
    ("zero-width in id", "billing__refund", with_(order_id="ORD-10\u200b01"), "invalid_arguments", "match"),
    (
        "deep nesting",
        "billing__refund",
        with_(meta=json.loads("[" * 80 + "]" * 80)),
        "invalid_arguments",
        "nest",
    ),
    (
        "huge value",
        "billing__refund",
        with_(meta={"x": "a" * (1024 * 1024 + 1)}),
        "invalid_arguments",
        "bytes",
    ),
    ("case variant name", "billing__Refund", OK, "unknown_tool", "Unknown tool"),
    ("trailing space", "billing__refund ", OK, "unknown_tool", "Unknown tool"),
    ("zero-width name", "billing__refund\u200b", OK, "unknown_tool", "Unknown tool"),
    ("fullwidth name", "billing__ｒefund", OK, "unknown_tool", "Unknown tool"),
    ("cyrillic look-alike", "billing__rеfund", OK, "unknown_tool", "Unknown tool"),
    ("another server's prefix", "tickets__refund", {"ticket_id": "T-1"}, "unknown_tool", "Unknown tool"),
    ("no prefix", "refund", OK, "unknown_tool", "Unknown tool"),
    ("hidden tool", "billing__set_payout_destination", {"account": "X"}, "unknown_tool", "Unknown tool"),
    ("unlisted tool", "billing__unlisted", {}, "unknown_tool", "Unknown tool"),
]


@pytest.mark.parametrize(
    ("name", "arguments", "reason", "says"), [d[1:] for d in DENIED], ids=[d[0] for d in DENIED]
)
def test_smuggled_and_out_of_bounds_calls_are_denied(
    name: str, arguments: dict[str, Any], reason: str, says: str
) -> None:
    got_reason, detail = decide("support-bot", name, arguments)
    assert got_reason == reason
    assert says in detail


def test_an_unknown_name_is_escaped_and_truncated_in_the_decision() -> None:
    offers = POLICY.offers(POLICY.agents["support-bot"], CATALOG)
    d = POLICY.decide("x\n\x1b[31m" + "y" * 1000, {}, offers)
    assert d.server is None
    assert "\n" not in d.tool
    assert "\x1b" not in d.tool
    assert len(d.tool) <= 256


WIRE = [
    ("duplicate keys", b'{"amount":5,"amount":5000}', "duplicate key"),
    ("NaN", b'{"amount":NaN}', "NaN"),
    ("Infinity", b'{"amount":-Infinity}', "Infinity"),
    ("overflow", b'{"amount":1e999}', "overflows"),
    ("more precision than a double", b'{"amount":100.0000000000000001}', "precision"),
    ("invalid UTF-8", b'{"a":"\xff"}', "UTF-8"),
    ("lone surrogate", b'{"a":"\\ud800"}', "surrogate"),
    ("deep nesting", b"[" * 65 + b"]" * 65, "nests"),
    ("very deep nesting", b"[" * 100000 + b"]" * 100000, "nests"),
    ("byte order mark", b'\xef\xbb\xbf{"a":1}', "byte order mark"),
    ("too large", b'{"a":"' + b"x" * 2**20 + b'"}', "larger"),
    ("5,000-digit integer", b'{"a":' + b"9" * 5000 + b"}", "digits"),
]


@pytest.mark.parametrize(("raw", "says"), [w[1:] for w in WIRE], ids=[w[0] for w in WIRE])
def test_messages_that_two_parsers_could_read_differently_are_refused(raw: bytes, says: str) -> None:
    from mcp_guard.wire import StrictJSONError

    with pytest.raises(StrictJSONError, match=says):
        parse_strict(raw, 2**20)


def test_strict_json_keeps_ordinary_numbers_exact() -> None:
    expected = {"a": 0.1, "b": 50.0, "c": 0, "d": 64}
    assert parse_strict(b'{"a":0.1,"b":5e1,"c":-0,"d":64}', 1024) == expected
