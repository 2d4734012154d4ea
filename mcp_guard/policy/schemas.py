"""What the model is shown: the upstream's inputSchema with the grant's limits merged in place,
and tool text stripped of control and invisible characters. Pure."""

from __future__ import annotations

import copy
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

_UPPER = {"maximum": min, "exclusiveMaximum": min, "maxLength": min, "maxItems": min, "maxProperties": min}
_LOWER = {"minimum": max, "exclusiveMinimum": max, "minLength": max, "minItems": max, "minProperties": max}
_BOUNDS = {**_UPPER, **_LOWER}
_PLAIN = re.compile(r"[\x20-\x7e\t\n]*")
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")


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
