"""Keeps upstream credentials away from agents and the ledger: every value a manifest injects is
scrubbed (raw, base64, URL- and JSON-escaped) from what flows back, and values that look like
credentials are redacted from what is recorded."""

from __future__ import annotations

import base64
import json
import re
import sys
import unicodedata
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"
MAX_LOG_CHARS = 8192  # one stderr line at most; an upstream can send a message of megabytes

_CREDENTIAL = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)"
    r"|\b[Bb]earer\s+[A-Za-z0-9._~+/-]{8,}=*"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{10,}"
    r"|\bsk-[A-Za-z0-9_-]{20,}"
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}"
    r"|\bgithub_pat_[A-Za-z0-9_]{30,}"
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    re.DOTALL,
)


def _variants(secret: str) -> set[str]:
    raw = secret.encode()
    b64 = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    forms = {secret, b64, b64.rstrip("="), url, url.rstrip("="), quote(secret, safe=""), quote_plus(secret)}
    forms.add(json.dumps(secret)[1:-1])
    forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    return {f for f in forms if len(f) >= 8}


class Scrubber:
    """Replaces known secrets (and, for records, credential-looking values) in text and JSON."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms = sorted({v for s in secrets if len(s) >= 8 for v in _variants(s)}, key=len, reverse=True)
        self._known = re.compile("|".join(re.escape(f) for f in forms)) if forms else None

    def text(self, value: str) -> str:
        """Known secrets out of text that goes back to an agent."""
        return self._known.sub(REDACTED, value) if self._known is not None else value

    def log(self, text: str) -> None:
        """One line to the operator (stderr): secrets and credentials redacted, then control and
        invisible characters escaped, so that no text an upstream or agent chose can forge a line
        or drive the terminal. Every line the guard writes while serving goes through here."""
        line = escape_controls(self.record(text))
        if len(line) > MAX_LOG_CHARS:
            line = line[:MAX_LOG_CHARS] + " [cut]"
        print(f"mcp-guard: {line}", file=sys.stderr, flush=True)

    def finds(self, value: str) -> bool:
        """Whether text holds a known secret."""
        return self._known is not None and self._known.search(value) is not None

    def record(self, value: str) -> str:
        """Known secrets and credential-looking values out of text that is recorded."""
        return _CREDENTIAL.sub(REDACTED, self.text(value))

    def json(self, value: Any, *, record: bool = False) -> Any:
        """The same over every string (keys included) of a JSON value."""
        fn = self.record if record else self.text
        if self._known is None and not record:
            return value
        return _walk(value, fn)


# Characters escaped in what the guard writes to stderr: control characters (C0, DEL, C1: line
# breaks and terminal escapes), format characters (bidi overrides, zero-width), lone surrogates,
# and the Unicode line and paragraph separators.
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """Text as one printable line: each control or invisible character becomes a visible escape
    (`\\n`, `\\x1b`, `\\u202e`); other text, non-ASCII letters included, is unchanged."""
    if _PRINTABLE.fullmatch(text):  # the common case: nothing to escape
        return text
    return _NOT_PRINTABLE_ASCII.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    ch = match.group()
    if unicodedata.category(ch) not in _ESCAPED_CATEGORIES:
        return ch
    if ch in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[ch]
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _walk(value: Any, fn: Any) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {fn(k) if isinstance(k, str) else k: _walk(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, fn) for v in value]
    return value
