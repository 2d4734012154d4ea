"""Strict JSON for inbound messages. The SDK's parser accepts NaN and keeps the last of two
duplicate keys; a guard must refuse both, and anything else two parsers could read differently,
before dispatch."""

from __future__ import annotations

import json
import math
from decimal import Decimal, InvalidOperation
from typing import Any

MAX_DEPTH = 64


class StrictJSONError(ValueError):
    """The message is not strict JSON; the text says why."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            msg = f"duplicate key {key!r}"
            raise StrictJSONError(msg)
        out[key] = value
    return out


def _constant(name: str) -> Any:
    msg = f"{name} is not a JSON number"
    raise StrictJSONError(msg)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        msg = f"number {text[:40]} overflows a double"
        raise StrictJSONError(msg)
    if repr(value) == text:  # the common case: the text is the double's own shortest form
        return value
    try:
        if Decimal(text) != Decimal(repr(value)):
            msg = f"number {text[:40]} has more precision than a double holds"
            raise StrictJSONError(msg)
    except InvalidOperation:
        msg = f"number {text[:40]} is malformed"
        raise StrictJSONError(msg) from None
    return value


def _int(text: str) -> int:
    if len(text) > 40:
        msg = "integer has too many digits"
        raise StrictJSONError(msg)
    return int(text)


def parse_strict(data: bytes, max_bytes: int) -> Any:
    """Parse one message: valid UTF-8, no lone surrogates, no duplicate keys, no NaN or
    Infinity, no number a double cannot hold exactly as written, nesting at most 64 deep."""
    if len(data) > max_bytes:
        msg = f"message is larger than {max_bytes} bytes"
        raise StrictJSONError(msg)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        msg = "message is not valid UTF-8"
        raise StrictJSONError(msg) from None
    if text.startswith("\ufeff"):
        msg = "message starts with a byte order mark"
        raise StrictJSONError(msg)
    try:
        value = json.loads(
            text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float, parse_int=_int
        )
    except StrictJSONError:
        raise
    except RecursionError:
        msg = f"message nests deeper than {MAX_DEPTH} levels"
        raise StrictJSONError(msg) from None
    except ValueError as exc:
        msg = f"invalid JSON: {exc}"
        raise StrictJSONError(msg) from None
    # Lone surrogates can only come from \u escapes (the bytes were valid UTF-8), and nesting
    # needs brackets: most messages have neither to look for.
    if b"\\u" in data or data.count(b"[") + data.count(b"{") >= MAX_DEPTH:
        _check(value, 0)
    return value


def _check(value: Any, depth: int) -> None:
    if depth >= MAX_DEPTH:
        msg = f"message nests deeper than {MAX_DEPTH} levels"
        raise StrictJSONError(msg)
    if isinstance(value, str):
        _no_surrogates(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_surrogates(key)
            _check(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check(item, depth + 1)


def _no_surrogates(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        msg = "message contains a lone surrogate"
        raise StrictJSONError(msg) from None
