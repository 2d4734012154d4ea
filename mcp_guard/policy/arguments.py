"""Argument checks, in order: strict JSON (finite numbers, safe integers, declared names, depth,
size), the upstream's inputSchema, then the grant's limits. Pure: values in, violations out."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry
from referencing.exceptions import NoSuchResource

from mcp_guard.policy.reasons import Reason
from mcp_guard.policy.simple import Predicate, predicate

MAX_DEPTH = 64
MAX_SAFE_INTEGER = 2**53


@dataclass(frozen=True, slots=True)
class Violation:
    """Why arguments were refused: a reason code and one line saying what would pass."""

    reason: Reason  # invalid_arguments | limit_exceeded | budget_exhausted
    detail: str


def _no_retrieval(uri: str) -> Any:
    # Never fetch a $ref over the network (or from disk): unknown references fail validation.
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


_REGISTRY: Registry[Any] = Registry(retrieve=_no_retrieval)  # type: ignore[call-arg]


@lru_cache(maxsize=1024)
def _compile_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def pattern_ok(pattern: str, text: str) -> bool:
    """JSON Schema's `pattern`, except that a trailing `$` means the end of the string: Python's
    `$` also matches before a final newline, so `^[a-z]+$` would accept "abc\\n"."""
    match = _compile_pattern(pattern).search(text)
    if match is None:
        return False
    return not (pattern.endswith("$") and not pattern.endswith("\\$") and match.end() != len(text))


def _strict_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if isinstance(instance, str) and not pattern_ok(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _properties(validator: Any, properties: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    # jsonschema's own `properties` reports a `false` subschema without the property's name.
    if not validator.is_type(instance, "object"):
        return
    for name, subschema in properties.items():
        if name not in instance:
            continue
        if subschema is False:
            yield ValidationError(f"{name!r} may not be sent", validator="false", path=[name])
        else:
            yield from validator.descend(instance[name], subschema, path=name, schema_path=name)


_Validator: Any = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, {"pattern": _strict_pattern, "properties": _properties}
)


@dataclass(frozen=True, slots=True)
class Compiled:
    """A schema ready to check arguments against."""

    validator: Any  # jsonschema's: the authority, and the words of every refusal
    fast: Predicate | None  # for a simple schema: valid exactly when the validator says so


def compile_schema(schema: Mapping[str, Any] | bool) -> Compiled:
    """A schema compiled once per policy and tool, never per call; identical schemas (the same
    limits on many tools) share one, which holds no state."""
    return _compiled(json.dumps(schema, sort_keys=True, separators=(",", ":")))


@lru_cache(maxsize=4096)
def _compiled(schema_json: str) -> Compiled:
    schema = json.loads(schema_json)
    return Compiled(_Validator(schema, registry=_REGISTRY), predicate(schema, pattern_ok))


def check_strict(arguments: Mapping[str, Any], declared: frozenset[str], max_bytes: int) -> list[Violation]:
    """What JSON Schema alone lets through: non-finite or unsafe numbers, undeclared names,
    deep nesting, oversize values."""
    out: list[Violation] = []
    for name in arguments:
        if name not in declared:
            out.append(Violation(Reason.INVALID_ARGUMENTS, f"{_show(name)} is not an argument of this tool"))
    for path, problem in _walk(arguments, "", 0):
        out.append(Violation(Reason.INVALID_ARGUMENTS, f"{path or 'arguments'} {problem}"))
        break
    if not out:
        try:
            size = len(json.dumps(arguments, ensure_ascii=False, allow_nan=False).encode())
        except (ValueError, TypeError):
            size = max_bytes + 1
        if size > max_bytes:
            out.append(Violation(Reason.INVALID_ARGUMENTS, f"arguments must be at most {max_bytes} bytes"))
    return out


def _walk(value: Any, path: str, depth: int) -> Iterator[tuple[str, str]]:
    if depth > MAX_DEPTH:
        yield path, f"must nest at most {MAX_DEPTH} levels"
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, float):
        if not math.isfinite(value):
            yield path, "must be a finite number"
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            yield path, f"must be an integer within +-{MAX_SAFE_INTEGER}"
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                yield path, "must have string keys"
                return
            yield from _walk(item, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]", depth + 1)
    else:
        yield path, "must be a JSON value"


def check_schema(schema: Compiled, arguments: Mapping[str, Any], reason: Reason) -> list[Violation]:
    """Validate against a compiled schema; the first error (best match) becomes one violation.
    A simple schema's fast check may pass the arguments; only the validator refuses."""
    # An exception (a pattern that does not compile) leaves it to the validator too.
    if schema.fast is not None:
        with suppress(Exception):
            if schema.fast(arguments):
                return []
    try:
        error = _best(schema.validator.iter_errors(arguments))
    except Exception:  # a pathological schema or value must never fail open
        return [Violation(reason, "arguments could not be validated")]
    return [] if error is None else [Violation(reason, describe(error))]


def _best(errors: Iterator[ValidationError]) -> ValidationError | None:
    found: ValidationError | None = best_match(errors)
    return found


def describe(error: ValidationError) -> str:
    """What would pass, in the words a model can act on: `amount must be <= 100`."""
    where = ".".join(str(p) for p in error.absolute_path) or "arguments"
    kw: Any = error.validator
    val: Any = error.validator_value
    bounds = {"maximum": "<=", "minimum": ">=", "exclusiveMaximum": "<", "exclusiveMinimum": ">"}
    if kw in bounds:
        return f"{where} must be {bounds[kw]} {_num(val)}"
    if kw == "type":
        kinds = val if isinstance(val, list) else [val]
        return f"{where} must be of type {' or '.join(kinds)}"
    if kw == "enum":
        return f"{where} must be one of {', '.join(_show(v) for v in val)}"
    if kw == "const":
        return f"{where} must be {_show(val)}"
    if kw == "required":
        return f"{error.message.split(' is a required')[0]} is required"
    if kw in ("additionalProperties", "unevaluatedProperties"):
        return f"{where}: {error.message}"
    if kw == "pattern":
        return f"{where} must match {val!r}"
    if kw in ("maxLength", "minLength"):
        return f"{where} must be {'at most' if kw == 'maxLength' else 'at least'} {val} characters"
    if kw in ("maxItems", "minItems"):
        return f"{where} must have {'at most' if kw == 'maxItems' else 'at least'} {val} items"
    if kw == "multipleOf":
        return f"{where} must be a multiple of {_num(val)}"
    if kw == "false" or error.schema is False:
        return f"{where} may not be sent"
    return f"{where}: {error.message}"[:300]


def _num(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 80 else text[:77] + "..."
