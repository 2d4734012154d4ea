"""A grant's limit fixes the type it speaks of, and no upstream schema can weaken it: tables of
(upstream schema, limit, call, expected decision), pure."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from mcp_guard.config import AgentConfig, GuardConfig
from mcp_guard.errors import ConfigError
from mcp_guard.manifest import Manifest
from mcp_guard.policy.engine import Policy
from mcp_guard.policy.offers import ToolDef
from mcp_guard.policy.schemas import one_dialect, typed_limit

# What the SDK's own MCPServer advertises for `amount: Decimal` and `count: int`.
DECIMAL = {"anyOf": [{"type": "number"}, {"type": "string"}], "title": "Amount"}
DRAFT4 = "http://json-schema.org/draft-04/schema#"


def _policy(schema: dict[str, Any], limits: dict[str, Any]) -> tuple[Policy, dict[str, ToolDef]]:
    tool = ToolDef("refund", schema, hashlib.sha256(json.dumps(schema).encode()).hexdigest())
    manifest = Manifest.model_validate(
        {
            "server": "billing",
            "upstream": {"command": "x"},
            "tools": {"refund": {"allow": ["bot"], "arguments": limits}},
        }
    )
    return Policy(GuardConfig(agents={"bot": AgentConfig()}), [manifest]), {"refund": tool}


def decide(schema: dict[str, Any], limits: dict[str, Any], arguments: dict[str, Any]) -> str | None:
    policy, tools = _policy(schema, limits)
    offers = policy.offers(policy.agents["bot"], {"billing": tuple(tools.values())})
    decision = policy.decide("billing__refund", arguments, offers)
    return None if decision.allowed else decision.reason


def obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


CAP = {"amount": {"exclusiveMinimum": 0, "maximum": 100}}

# Upstream `amount` accepts a number or a string; the grant caps it at 100.
DECIMAL_AMOUNTS = [
    ("a number under the cap", 40, None),
    ("the cap itself", 100, None),
    ("a float under the cap", 99.5, None),
    ("a number over the cap", 5000, "limit_exceeded"),
    ("a string over the cap", "5000", "limit_exceeded"),
    ("a string under the cap", "40", "limit_exceeded"),
    ("a negative string", "-5", "limit_exceeded"),
    ("an exponent string", "1E+6", "limit_exceeded"),
    ("a lower-case exponent string", "1e6", "limit_exceeded"),
    ("a padded string", " 50 ", "limit_exceeded"),
    ("a string with a newline", "50\n", "limit_exceeded"),
    ("a full-width digit string", "５０", "limit_exceeded"),
    ("a NaN string", "NaN", "limit_exceeded"),
    ("an Infinity string", "Infinity", "limit_exceeded"),
    ("a hex string", "0x1388", "limit_exceeded"),
    ("an empty string", "", "limit_exceeded"),
    ("a boolean", True, "invalid_arguments"),
    ("null", None, "invalid_arguments"),
    ("an array", [5000], "invalid_arguments"),
    ("an object", {"value": 5000}, "invalid_arguments"),
]


@pytest.mark.parametrize(
    ("amount", "reason"), [c[1:] for c in DECIMAL_AMOUNTS], ids=[c[0] for c in DECIMAL_AMOUNTS]
)
def test_a_numeric_cap_lets_only_a_number_through_where_the_upstream_also_takes_strings(
    amount: Any, reason: str | None
) -> None:
    assert decide(obj(amount=DECIMAL), CAP, {"amount": amount}) == reason


TYPE_CASES = [
    # (upstream property, limit, value, reason)
    ("integer upstream stays integer", {"type": "integer"}, {"maximum": 5}, 3.5, "invalid_arguments"),
    ("integer upstream takes an integer", {"type": "integer"}, {"maximum": 5}, 3, None),
    ("untyped upstream, numeric limit, string", {}, {"maximum": 5}, "3", "limit_exceeded"),
    ("untyped upstream, numeric limit, number", {}, {"maximum": 5}, 3, None),
    ("multipleOf on a string", DECIMAL, {"multipleOf": 5}, "7", "limit_exceeded"),
    ("minimum on a string", DECIMAL, {"minimum": 10}, "1", "limit_exceeded"),
    ("exclusiveMaximum on a string", DECIMAL, {"exclusiveMaximum": 10}, "99", "limit_exceeded"),
    ("pattern on a number", DECIMAL, {"pattern": "^[0-9]{1,2}$"}, 5000, "limit_exceeded"),
    ("pattern on a string", DECIMAL, {"pattern": "^[0-9]{1,2}$"}, "50", None),
    ("maxLength on a number", DECIMAL, {"maxLength": 2}, 123456, "limit_exceeded"),
    ("maxLength on a list", {}, {"maxLength": 2}, ["a", "b", "c"], "limit_exceeded"),
    ("enum of strings, a number", DECIMAL, {"enum": ["10", "20"]}, 10, "limit_exceeded"),
    ("enum of numbers, a string", DECIMAL, {"enum": [10, 20]}, "10", "limit_exceeded"),
    ("enum of numbers, a boolean", {}, {"enum": [1, 0]}, True, "limit_exceeded"),
    ("const number, a string", DECIMAL, {"const": 10}, "10", "limit_exceeded"),
    ("const false, zero", {}, {"const": False}, 0, "limit_exceeded"),
    ("maxItems on a string", {}, {"maxItems": 1}, "abc", "limit_exceeded"),
    (
        "numeric limit inside anyOf",
        DECIMAL,
        {"anyOf": [{"maximum": 5}, {"minimum": 90}]},
        "50",
        "limit_exceeded",
    ),
    ("numeric limit inside allOf", DECIMAL, {"allOf": [{"maximum": 100}]}, "5000", "limit_exceeded"),
    (
        "items of an array",
        {"type": "array", "items": DECIMAL},
        {"items": {"maximum": 100}},
        [1, "5000"],
        "limit_exceeded",
    ),
    (
        "property of an object",
        {"type": "object", "properties": {"amount": DECIMAL}},
        {"properties": {"amount": {"maximum": 100}}},
        {"amount": "5000"},
        "limit_exceeded",
    ),
]


@pytest.mark.parametrize(
    ("prop", "limit", "value", "reason"), [c[1:] for c in TYPE_CASES], ids=[c[0] for c in TYPE_CASES]
)
def test_each_limit_fixes_the_type_its_keywords_speak_of(
    prop: dict[str, Any], limit: dict[str, Any], value: Any, reason: str | None
) -> None:
    assert decide(obj(x=prop), {"x": limit}, {"x": value}) == reason


def test_the_advertised_property_carries_the_type_the_limit_fixes() -> None:
    policy, tools = _policy(obj(amount=DECIMAL, count={"type": "integer"}), {**CAP, "count": {"maximum": 3}})
    offer = policy.offers(policy.agents["bot"], {"billing": tuple(tools.values())})["billing__refund"]
    assert offer.input_schema["properties"]["amount"]["type"] == "number"
    assert offer.input_schema["properties"]["amount"]["maximum"] == 100
    assert offer.input_schema["properties"]["count"] == {"type": "integer", "maximum": 3}


def test_an_approval_condition_is_not_typed_so_a_string_still_asks_for_approval() -> None:
    tool = ToolDef("refund", obj(amount=DECIMAL), "d")
    manifest = Manifest.model_validate(
        {
            "server": "billing",
            "upstream": {"command": "x"},
            "tools": {
                "refund": {"allow": ["bot"], "approval": {"when": {"amount": {"exclusiveMinimum": 50}}}}
            },
        }
    )
    policy = Policy(GuardConfig(agents={"bot": AgentConfig()}), [manifest])
    offers = policy.offers(policy.agents["bot"], {"billing": (tool,)})
    assert policy.decide("billing__refund", {"amount": "5000"}, offers).approval is not None
    assert policy.decide("billing__refund", {"amount": 10}, offers).approval is None


@pytest.mark.parametrize(
    "limit",
    [
        {"maximum": 1, "pattern": "x"},
        {"minLength": 1, "minItems": 1},
        {"type": "string", "maximum": 5},
        {"enum": ["a"], "maximum": 5},
        {"const": 5, "pattern": "x"},
        {"enum": []},
    ],
)
def test_a_limit_that_lets_no_value_through_is_a_load_error(limit: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"let no value through|invalid JSON Schema"):
        Manifest.model_validate(
            {
                "server": "s",
                "upstream": {"command": "x"},
                "tools": {"t": {"allow": [], "arguments": {"a": limit}}},
            }
        )


def test_a_limit_may_not_name_a_dialect() -> None:
    with pytest.raises(ValueError, match=r"\$schema is not allowed"):
        Manifest.model_validate(
            {
                "server": "s",
                "upstream": {"command": "x"},
                "tools": {
                    "t": {"allow": [], "arguments": {"a": {"anyOf": [{"$schema": DRAFT4, "maximum": 1}]}}}
                },
            }
        )
    assert issubclass(ConfigError, Exception)


def test_typing_leaves_not_and_if_as_written_since_a_type_there_would_loosen_them() -> None:
    limit = {"not": {"maximum": 5}, "if": {"minimum": 1}, "then": {"maximum": 9}}
    assert typed_limit(limit) == {
        "not": {"maximum": 5},
        "if": {"minimum": 1},
        "then": {"maximum": 9, "type": "number"},
    }


# A nested $schema must not switch the dialect of a subschema and so drop the grant's limits.
def _nested(depth: int, prop: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = {"$schema": DRAFT4, **prop}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"inner": schema}, "$schema": DRAFT4}
    return schema


def _wrap(depth: int, value: Any) -> Any:
    for _ in range(depth):
        value = {"inner": value}
    return value


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_a_nested_draft4_schema_cannot_drop_an_exclusive_maximum(depth: int) -> None:
    limit: dict[str, Any] = {"exclusiveMaximum": 100}
    for _ in range(depth):
        limit = {"properties": {"inner": limit}}
    schema = obj(amount=_nested(depth, {"type": "number"}))
    assert decide(schema, {"amount": limit}, {"amount": _wrap(depth, 100)}) == "limit_exceeded"
    assert decide(schema, {"amount": limit}, {"amount": _wrap(depth, 5000)}) == "limit_exceeded"
    assert decide(schema, {"amount": limit}, {"amount": _wrap(depth, 99)}) is None


@pytest.mark.parametrize("depth", [0, 2])
def test_a_nested_draft4_schema_cannot_loosen_the_strict_end_of_a_pattern(depth: int) -> None:
    limit: dict[str, Any] = {"pattern": "^[a-z]+$"}
    for _ in range(depth):
        limit = {"properties": {"inner": limit}}
    schema = obj(name=_nested(depth, {"type": "string", "pattern": "^[a-z]+$"}))
    assert decide(schema, {"name": limit}, {"name": _wrap(depth, "abc\n")}) == "invalid_arguments"
    assert decide(schema, {"name": limit}, {"name": _wrap(depth, "abc")}) is None


def test_a_dialect_behind_a_local_reference_is_ignored_too() -> None:
    schema = {
        "type": "object",
        "$defs": {"amount": {"$schema": DRAFT4, "type": "number", "maximum": 100, "exclusiveMaximum": True}},
        "properties": {"amount": {"$ref": "#/$defs/amount"}},
    }
    # Read as 2020-12, `exclusiveMaximum: true` is not a number: the upstream's schema is invalid and
    # every call is refused, rather than the draft-04 reading letting 100 through a `< 100` limit.
    assert decide(schema, {"amount": {"exclusiveMaximum": 100}}, {"amount": 100}) == "invalid_arguments"
    assert decide(schema, {"amount": {"exclusiveMaximum": 100}}, {"amount": 50}) == "invalid_arguments"


def test_one_dialect_keeps_a_property_named_schema_and_values_that_hold_the_word() -> None:
    schema = {
        "$schema": DRAFT4,
        "properties": {"$schema": {"type": "string", "enum": [{"$schema": "x"}]}},
        "items": [{"$schema": DRAFT4}],
    }
    assert one_dialect(schema) == {
        "properties": {"$schema": {"type": "string", "enum": [{"$schema": "x"}]}},
        "items": [{}],
    }


def test_a_forbidden_argument_refusal_names_the_argument() -> None:
    schema = obj(amount={"type": "number"}, note={"type": "string"}, meta={"type": "object"})
    policy, tools = _policy(schema, {"note": False, "meta": {"properties": {"secret": False}}})
    offers = policy.offers(policy.agents["bot"], {"billing": tuple(tools.values())})
    first = policy.decide("billing__refund", {"note": "x"}, offers)
    nested = policy.decide("billing__refund", {"meta": {"secret": 1}}, offers)
    assert (first.reason, first.detail) == ("limit_exceeded", "note may not be sent")
    assert (nested.reason, nested.detail) == ("limit_exceeded", "meta.secret may not be sent")


def test_the_advertised_schema_names_the_one_dialect_at_the_top_and_nowhere_else() -> None:
    schema = {"$schema": DRAFT4, **obj(amount={"$schema": DRAFT4, "type": "number"})}
    policy, tools = _policy(schema, CAP)
    offer = policy.offers(policy.agents["bot"], {"billing": tuple(tools.values())})["billing__refund"]
    assert offer.input_schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "$schema" not in offer.input_schema["properties"]["amount"]
    plain = _policy(obj(amount={"type": "number"}), CAP)
    offers = plain[0].offers(plain[0].agents["bot"], {"billing": tuple(plain[1].values())})
    assert "$schema" not in offers["billing__refund"].input_schema
