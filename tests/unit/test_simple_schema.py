"""The fast check for simple schemas against the JSON Schema validator it stands in for: on
thousands of generated schemas and instances they must agree exactly, and anything outside the
simple subset must be left to the validator."""

from __future__ import annotations

import random
from typing import Any

import pytest

from mcp_guard.policy.arguments import check_schema, compile_schema, pattern_ok
from mcp_guard.policy.simple import predicate

PATTERNS = ["^[a-z]+$", "^ORD-[0-9]{3}$", "b", "^a\\$", "x$", "^$", "[0-9]"]
STRINGS = [
    "",
    "a",
    "abc",
    "abc\n",
    "ORD-123",
    "ORD-1234",
    "a$",
    "ÄÖ",
    "x",
    "b\n",
    "12",
    " ",
    "ｏｒｄ",
    "🙂🙂",
]
NUMBERS: list[Any] = [0, 1, -1, 2, 5, 0.5, 1.0, -0.0, 2.5, 100, 10**20, 1e20, 3.0000000000000004, 2**53 + 1]
TYPES = ["object", "array", "string", "number", "integer", "boolean", "null"]


def gen_schema(rng: random.Random, depth: int = 0) -> Any:
    if rng.random() < 0.05:
        return rng.choice([True, False])
    schema: dict[str, Any] = {}
    if rng.random() < 0.8:
        kinds = rng.sample(TYPES, rng.choice([1, 1, 1, 2]))
        schema["type"] = kinds[0] if len(kinds) == 1 and rng.random() < 0.7 else kinds
    kind = schema.get("type")
    kind = kind if isinstance(kind, str) else rng.choice(TYPES)
    if rng.random() < 0.2:
        schema["enum"] = rng.sample(STRINGS, rng.randint(0, 3))
    if rng.random() < 0.1:
        schema["const"] = rng.choice(STRINGS)
    if kind in ("number", "integer") or rng.random() < 0.1:
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if rng.random() < 0.35:
                schema[key] = rng.choice([*NUMBERS, 0.1, -5, 99.99])
    if kind == "string" or rng.random() < 0.1:
        if rng.random() < 0.4:
            schema["minLength"] = rng.randint(0, 4)
        if rng.random() < 0.4:
            schema["maxLength"] = rng.randint(0, 4)
        if rng.random() < 0.4:
            schema["pattern"] = rng.choice(PATTERNS)
    if (kind == "array" or rng.random() < 0.1) and depth < 3:
        if rng.random() < 0.6:
            schema["items"] = gen_schema(rng, depth + 1)
        if rng.random() < 0.3:
            schema["minItems"] = rng.randint(0, 2)
        if rng.random() < 0.3:
            schema["maxItems"] = rng.randint(0, 3)
    if (kind == "object" or rng.random() < 0.1) and depth < 3:
        names = rng.sample(["a", "b", "c", "amount", "order_id"], rng.randint(0, 3))
        schema["properties"] = {n: gen_schema(rng, depth + 1) for n in names}
        if rng.random() < 0.5:
            schema["required"] = rng.sample(["a", "b", "c", "amount", "order_id"], rng.randint(0, 2))
        if rng.random() < 0.5:
            schema["additionalProperties"] = rng.choice([False, True, gen_schema(rng, depth + 1)])
    if rng.random() < 0.2:
        schema["description"] = "annotated"
    if rng.random() < 0.05:
        schema["format"] = "email"
    return schema


def gen_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if roll < 0.25:
        return rng.choice(STRINGS)
    if roll < 0.5:
        return rng.choice(NUMBERS)
    if roll < 0.6:
        return rng.choice([True, False, None])
    if roll < 0.75 and depth < 3:
        return [gen_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 3:
        names = rng.sample(["a", "b", "c", "amount", "order_id", "z"], rng.randint(0, 4))
        return {n: gen_value(rng, depth + 1) for n in names}
    return rng.choice(STRINGS)


@pytest.mark.parametrize("seed", range(8))
def test_the_fast_check_agrees_with_the_validator_on_generated_schemas_and_values(seed: int) -> None:
    rng = random.Random(seed)
    compared = 0
    for _ in range(400):
        schema = gen_schema(rng)
        compiled = compile_schema(schema)
        fast = compiled.fast
        assert fast is not None, schema  # everything generated is in the simple subset
        for _ in range(12):
            value = gen_value(rng)
            assert fast(value) == compiled.validator.is_valid(value), (schema, value)
            compared += 1
    assert compared == 400 * 12


@pytest.mark.parametrize(
    ("schema", "valid", "invalid"),
    [
        ({"type": "integer"}, [1, 1.0, -0.0, 2**60], [1.5, True, "1", None]),
        ({"type": "number", "maximum": 100}, [100, 99.5, -(10**30)], [100.0000001, 10**20, True, "5"]),
        ({"type": "string", "pattern": "^[a-z]+$"}, ["abc"], ["abc\n", "ABC", ""]),
        ({"minimum": 5}, [5, "tiny", True, None, [1]], [4.99, 0]),
        ({"enum": ["USD", "EUR"]}, ["USD"], ["usd", 1, None, ["USD"]]),
        ({"type": "string", "maxLength": 2}, ["🙂🙂", "ab"], ["abc"]),
        (
            {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False},
            [{}, {"a": "x"}],
            [{"a": 1}, {"b": "x"}, [], "a"],
        ),
    ],
)
def test_edge_values_are_judged_as_the_validator_judges_them(
    schema: dict[str, Any], valid: list[Any], invalid: list[Any]
) -> None:
    compiled = compile_schema(schema)
    assert compiled.fast is not None
    for value in valid:
        assert (compiled.fast(value), compiled.validator.is_valid(value)) == (True, True), value
    for value in invalid:
        assert (compiled.fast(value), compiled.validator.is_valid(value)) == (False, False), value


@pytest.mark.parametrize(
    "schema",
    [
        {"anyOf": [{"type": "string"}]},
        {"allOf": [{"maximum": 3}]},
        {"$ref": "#/$defs/x", "$defs": {"x": {}}},
        {"enum": [1, 2]},
        {"const": True},
        {"patternProperties": {"^x": {}}},
        {"items": [{"type": "string"}]},
        {"minLength": 1.0},
        {"maximum": True},
        {"maximum": float("inf")},
        {"type": "decimal"},
        {"type": []},
        {"not": {}},
        {"x-vendor": 1},
        {"properties": {"a": {"oneOf": [{}]}}},
        {"uniqueItems": True},
    ],
)
def test_schemas_outside_the_simple_subset_are_left_to_the_validator(schema: dict[str, Any]) -> None:
    assert predicate(schema, pattern_ok) is None
    assert compile_schema(schema).fast is None


def test_a_refusal_always_comes_from_the_validator_in_its_words() -> None:
    schema = compile_schema(
        {
            "type": "object",
            "properties": {"amount": {"type": "number", "maximum": 100}},
            "additionalProperties": False,
        }
    )
    assert check_schema(schema, {"amount": 40}, "limit_exceeded") == []
    (violation,) = check_schema(schema, {"amount": 400}, "limit_exceeded")
    assert (violation.reason, violation.detail) == ("limit_exceeded", "amount must be <= 100")


def test_a_pattern_that_does_not_compile_is_the_validators_to_refuse() -> None:
    schema = compile_schema({"type": "string", "pattern": "(unclosed"})
    (violation,) = check_schema(schema, "text", "invalid_arguments")  # type: ignore[arg-type]
    assert violation.reason == "invalid_arguments"
