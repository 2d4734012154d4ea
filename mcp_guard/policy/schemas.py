"""What a schema means to the guard: a grant's limit with the JSON type it speaks of made explicit,
an upstream schema read under the guard's one dialect, the upstream's inputSchema with the grant's
limits merged in place (what the model is shown), and tool text stripped of control and invisible
characters. Pure."""

from __future__ import annotations

import copy
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

_UPPER = {"maximum": min, "exclusiveMaximum": min, "maxLength": min, "maxItems": min, "maxProperties": min}
_LOWER = {"minimum": max, "exclusiveMinimum": max, "minLength": max, "minItems": max, "minProperties": max}
_BOUNDS = {**_UPPER, **_LOWER}

# JSON Schema applies these keywords to one type only and lets every other type through, so
# `maximum: 100` alone would let the string "5000" pass. A limit that uses them fixes that type.
KEYWORDS_BY_TYPE: dict[str, frozenset[str]] = {
    "number": frozenset({"maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum", "multipleOf"}),
    "string": frozenset({"pattern", "maxLength", "minLength", "format"}),
    "array": frozenset({"maxItems", "minItems", "uniqueItems", "items", "prefixItems", "contains"}),
    "object": frozenset({"maxProperties", "minProperties", "properties", "required", "additionalProperties"}),
}
DIALECT = "https://json-schema.org/draft/2020-12/schema"
"""The one dialect the guard reads every schema in."""
_ANY_TYPE = frozenset({"null", "boolean", "integer", "number", "string", "array", "object"})
# Where a schema holds subschemas. `not` and `if` are left as written: a type inside them would
# loosen the schema (`not: {maximum: 5}` refuses every string; `not: {type: number, ...}` would not).
_ONE = frozenset(
    {"additionalProperties", "items", "contains", "propertyNames", "then", "else"}
    | {"unevaluatedItems", "unevaluatedProperties", "additionalItems", "contentSchema"}
)
_MANY = ("allOf", "anyOf", "oneOf", "prefixItems")
_NAMED = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_DATA = frozenset({"const", "enum", "default", "examples"})  # values, not schemas
_PLAIN = re.compile(r"[\x20-\x7e\t\n]*")
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")


def types_of(value: Any) -> frozenset[str] | None:
    """The JSON types a `type` keyword names (integer within number), or None if it names none."""
    names = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if names is None or not all(isinstance(n, str) and n in _ANY_TYPE for n in names):
        return None
    found = frozenset(names)
    return found | {"integer"} if "number" in found else found


def type_keyword(types: frozenset[str]) -> str | list[str]:
    """The `type` value for a set of types: integer is implied by number."""
    names = sorted(types - {"integer"} if "number" in types else types)
    return names[0] if len(names) == 1 else names


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def limit_types(limit: Mapping[str, Any]) -> frozenset[str] | None:
    """The types a limit's own keywords let through (its `type`, `enum`/`const` values and
    type-specific keywords, intersected), or None when they fix no type. Empty: nothing passes."""
    found: frozenset[str] | None = None

    def meet(types: frozenset[str]) -> None:
        nonlocal found
        if "number" in types:
            types = types | {"integer"}
        found = types if found is None else found & types

    for kind, keywords in KEYWORDS_BY_TYPE.items():
        if not keywords.isdisjoint(limit):
            meet(frozenset({kind}))
    if isinstance(limit.get("enum"), list):
        meet(frozenset(json_type(v) for v in limit["enum"]))
    if "const" in limit:
        meet(frozenset({json_type(limit["const"])}))
    if "type" in limit:
        meet(types_of(limit["type"]) or frozenset())
    return found


def typed_limit(limit: Any) -> Any:
    """A grant's limit with the type it speaks of made explicit at every level, so a limit only
    ever lets its own type through: `{maximum: 100}` becomes `{type: number, maximum: 100}`.
    Raises ValueError for a limit that can never pass (`{maximum: 1, pattern: "x"}`)."""
    if not isinstance(limit, Mapping):
        return limit
    out: dict[str, Any] = {}
    for key, value in limit.items():
        if key in _ONE and isinstance(value, Mapping):
            value = typed_limit(value)
        elif key in _MANY and isinstance(value, list):
            value = [typed_limit(v) for v in value]
        elif key in _NAMED and isinstance(value, Mapping):
            value = {name: typed_limit(v) for name, v in value.items()}
        out[key] = value
    types = limit_types(limit)
    if types is None:
        return out
    if not types:
        speaks = sorted(k for k in limit if k in ("type", "enum", "const") or _typed_keyword(k))
        msg = f"{', '.join(speaks)} together let no value through; split them with anyOf"
        raise ValueError(msg)
    out["type"] = type_keyword(types)
    return out


def _typed_keyword(key: str) -> bool:
    return any(key in keywords for keywords in KEYWORDS_BY_TYPE.values())


def one_dialect(schema: Any) -> Any:
    """A schema with every `$schema` removed, at every depth, so each subschema is read under the
    guard's one dialect (2020-12): a nested draft-04 `$schema` would otherwise switch the validator
    for that subschema and drop limits (numeric exclusiveMaximum, the strict trailing `$`)."""
    if isinstance(schema, list):
        return [one_dialect(v) for v in schema]
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$schema":
            continue
        if key in _DATA:
            out[key] = value
        elif key in _NAMED and isinstance(value, Mapping):  # names here are property names
            out[key] = {name: one_dialect(v) for name, v in value.items()}
        else:
            out[key] = one_dialect(value)
    return out


def has_dialect(schema: Any) -> bool:
    """Whether a `$schema` appears anywhere in the schema (outside values such as enum)."""
    return bool(one_dialect(schema) != schema)


def merge_limits(upstream: Mapping[str, Any], limits: Mapping[str, Any]) -> dict[str, Any]:
    """Tighten each limited property in place: the stricter bound, the intersection of enums,
    otherwise an allOf inside that property (never at the top level, which clients reject).
    `false` removes the argument; the result allows no other properties."""
    schema = copy.deepcopy(dict(upstream))
    props: dict[str, Any] = dict(schema.get("properties") or {})
    required = [r for r in schema.get("required") or [] if limits.get(r) is not False]
    for name, limit in limits.items():
        if limit is False:
            props.pop(name, None)
            continue
        if limit is True or name not in props:
            continue
        props[name] = _tighten(props[name], limit)
    schema["properties"] = props
    if required:
        schema["required"] = required
    else:
        schema.pop("required", None)
    schema["additionalProperties"] = False
    return schema


def _tighten(prop: Any, limit: Mapping[str, Any]) -> Any:
    if not isinstance(prop, dict):
        return {"allOf": [prop, dict(limit)]}
    out = dict(prop)
    extra: list[dict[str, Any]] = []
    for key, value in limit.items():
        if key not in out:
            out[key] = value
        elif out[key] == value:
            continue
        elif key == "type" and (mine := types_of(out[key])) and (theirs := types_of(value)):
            both = mine & theirs  # an integer upstream stays integer under a number limit
            out[key] = type_keyword(both) if both else out[key]
            if not both:
                extra.append({key: value})  # nothing passes; check --live names it
        elif key in _BOUNDS and _is_number(out[key]) and _is_number(value):
            out[key] = _BOUNDS[key](out[key], value)
        elif key == "enum" and isinstance(out[key], list) and isinstance(value, list):
            out[key] = [v for v in out[key] if any(_same(v, w) for w in value)]
        else:
            extra.append({key: value})
    if extra:
        out["allOf"] = [*out.get("allOf", []), *extra]
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def clean_text(text: str | None, limit: int = 4096) -> str | None:
    """Strip terminal escapes, control and invisible characters (format class Cf, e.g. zero-width
    and bidi overrides) from text shown to a model or a terminal."""
    if text is None:
        return None
    if _PLAIN.fullmatch(text):  # the common case: printable ASCII, tabs and newlines only
        return text[:limit]
    text = _ANSI.sub("", text)
    kept = [
        ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Co", "Cs", "Cn")
    ]
    return "".join(kept)[:limit]
