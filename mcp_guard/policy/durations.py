"""Durations as manifests write them (`30s`, `15m`, `1h`, `1d`) and as refusals and the CLI say
them. Pure values: the policy words its budget windows with these, and loading parses with them."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"^([0-9]+)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> float:
    """`30s`, `15m`, `1h`, `1d` -> seconds."""
    if isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
        if seconds > 0:
            return float(seconds)
    msg = f"{value!r} is not a duration (use a positive number with s, m, h or d: 30s, 15m, 1h, 1d)"
    raise ValueError(msg)


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{timedelta(seconds=seconds).total_seconds():g}s"
