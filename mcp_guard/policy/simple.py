"""A fast yes for the schemas most tools have: plain objects of strings, numbers, booleans and
arrays, with bounds, enums of strings and patterns. `predicate(schema)` compiles such a schema to
a function that says whether an instance is valid, exactly as the JSON Schema validator would; for
any other schema it returns None and the validator alone decides. The validator stays the
authority: the guard only skips it when this says valid, and asks it for every refusal. Pure."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sized
from typing import Any

Predicate = Callable[[Any], bool]

# Keywords that never change validity (annotations). `format` only annotates: no format checker.
# Servers built on zod name draft-07 in `$schema`; every keyword below means the same in both drafts.
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly"}
    | {"format", "$schema"}
)
_KEYWORDS = _ANNOTATIONS | {
    "type", "properties", "required", "additionalProperties", "enum", "const",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minLength", "maxLength", "pattern", "items", "minItems", "maxItems",
}  # fmt: skip
_TYPES: dict[str, Predicate] = {
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
    "string": lambda v: type(v) is str,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
    "number": lambda v: type(v) is int or type(v) is float,
    # JSON Schema's integer is a number with no fractional part: 1.0 is one.
    "integer": lambda v: type(v) is int or (type(v) is float and math.isfinite(v) and v.is_integer()),
}
_NUMBER_BOUNDS: dict[str, Callable[[Any, Any], bool]] = {
    "minimum": lambda v, b: v >= b,
    "maximum": lambda v, b: v <= b,
    "exclusiveMinimum": lambda v, b: v > b,
    "exclusiveMaximum": lambda v, b: v < b,
}


class _Unsupported(Exception):
    pass


def predicate(schema: Any, pattern_ok: Callable[[str, str], bool]) -> Predicate | None:
    """A function equal to `validator.is_valid` for this schema, or None if the schema uses
    anything outside the simple subset. `pattern_ok(pattern, text)` is the validator's own
    `pattern` rule, so both read patterns the same way."""
    try:
        return _compile(schema, pattern_ok)
    except _Unsupported:
        return None


def _compile(schema: Any, pattern_ok: Callable[[str, str], bool]) -> Predicate:
    if schema is True:
        return lambda _: True
    if schema is False:
        return lambda _: False
    if type(schema) is not dict or not set(schema) <= _KEYWORDS:
        raise _Unsupported
    checks: list[Predicate] = []
    if "type" in schema:
        checks.append(_type(schema["type"]))
    if "enum" in schema:
        checks.append(_strings_in(schema["enum"]))
    if "const" in schema:
        checks.append(_strings_in([schema["const"]]))
    for keyword, holds in _NUMBER_BOUNDS.items():
        if keyword in schema:
            checks.append(_number_bound(holds, _number(schema[keyword])))
    checks += _string_checks(schema, pattern_ok)
    checks += _array_checks(schema, pattern_ok)
    checks += _object_checks(schema, pattern_ok)
    if not checks:
        return lambda _: True
    if len(checks) == 1:
        return checks[0]
    return lambda value: all(check(value) for check in checks)


def _type(kind: Any) -> Predicate:
    kinds = [kind] if type(kind) is str else kind
    if type(kinds) is not list or not kinds or any(type(k) is not str or k not in _TYPES for k in kinds):
        raise _Unsupported
    tests = [_TYPES[k] for k in kinds]
    return tests[0] if len(tests) == 1 else (lambda value: any(test(value) for test in tests))


def _strings_in(values: Any) -> Predicate:
    # Only strings: equality of other JSON values (1 == 1.0, True != 1) is left to the validator.
    if type(values) is not list or any(type(v) is not str for v in values):
        raise _Unsupported
    allowed = frozenset(values)
    return lambda value: type(value) is str and value in allowed


def _number(bound: Any) -> int | float:
    if type(bound) is int or (type(bound) is float and math.isfinite(bound)):
        return bound
    raise _Unsupported


def _number_bound(holds: Callable[[Any, Any], bool], bound: int | float) -> Predicate:
    # Applies to numbers only (booleans are not numbers); anything else passes this keyword.
    return lambda value: not (type(value) is int or type(value) is float) or holds(value, bound)


def _count(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise _Unsupported
    return value


def _lengths(schema: Mapping[str, Any], kind: type[Sized], low_key: str, high_key: str) -> list[Predicate]:
    """minLength/maxLength on strings (in code points) or minItems/maxItems on arrays."""
    checks: list[Predicate] = []
    if low_key in schema:
        low = _count(schema[low_key])
        checks.append(lambda value: not isinstance(value, kind) or len(value) >= low)
    if high_key in schema:
        high = _count(schema[high_key])
        checks.append(lambda value: not isinstance(value, kind) or len(value) <= high)
    return checks


def _string_checks(schema: Mapping[str, Any], pattern_ok: Callable[[str, str], bool]) -> list[Predicate]:
    checks = _lengths(schema, str, "minLength", "maxLength")
    if "pattern" in schema:
        pattern = schema["pattern"]
        if type(pattern) is not str:
            raise _Unsupported
        checks.append(lambda value: type(value) is not str or pattern_ok(pattern, value))
    return checks


def _array_checks(schema: Mapping[str, Any], pattern_ok: Callable[[str, str], bool]) -> list[Predicate]:
    checks = _lengths(schema, list, "minItems", "maxItems")
    if "items" in schema:
        item = _compile(schema["items"], pattern_ok)
        checks.append(lambda value: type(value) is not list or all(item(v) for v in value))
    return checks


def _object_checks(schema: Mapping[str, Any], pattern_ok: Callable[[str, str], bool]) -> list[Predicate]:
    checks: list[Predicate] = []
    props = schema.get("properties", {})
    if type(props) is not dict:
        raise _Unsupported
    compiled = {name: _compile(sub, pattern_ok) for name, sub in props.items()}
    if "required" in schema:
        required = schema["required"]
        if type(required) is not list or any(type(r) is not str for r in required):
            raise _Unsupported
        names = tuple(required)
        checks.append(lambda value: type(value) is not dict or all(n in value for n in names))
    extra = _compile(schema["additionalProperties"], pattern_ok) if "additionalProperties" in schema else None
    if compiled or extra is not None:

        def properties(value: Any) -> bool:
            if type(value) is not dict:
                return True
            for name, item in value.items():
                check = compiled.get(name, extra)
                if check is not None and not check(item):
                    return False
            return True

        checks.append(properties)
    return checks
